"""Every benchmark's best time, kept for the summary that ``conftest.py`` prints.

pytest-benchmark's own table gives seconds per round; the targets are ratios to
the reference measured in the same run, so the summary prints those.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    table: str  # which summary table the row belongs to
    group: str  # rows of one group are compared with its "reference" row
    contender: str
    operations: int  # operations per round
    seconds: float  # best round

    @property
    def rate(self) -> float:
        return self.operations / self.seconds


@dataclass(frozen=True)
class Measure:
    """A figure that is not a rate: a latency, a share of a core, a peak of memory."""

    table: str
    name: str
    value: float
    unit: str


FIGURES: list[Figure] = []
MEASURES: list[Measure] = []
# Each benchmark module may add a function that turns the figures into verdicts.
VERDICTS: list[Callable[[list[Figure]], list[str]]] = []


def record(table: str, group: str, contender: str, operations: int, benchmark: object) -> None:
    stats = benchmark.stats.stats  # type: ignore[attr-defined]
    FIGURES.append(Figure(table, group, contender, operations, stats.min))


def measure(table: str, name: str, value: float, unit: str) -> None:
    MEASURES.append(Measure(table, name, value, unit))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"
