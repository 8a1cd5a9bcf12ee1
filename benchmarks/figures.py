"""Every benchmark's best time, kept for the summary that ``conftest.py`` prints.

pytest-benchmark's own table gives seconds per round; the targets are ratios to
the reference, so the summary prints those. A shared machine runs slower for
seconds at a time, long enough to cover all the rounds of one test and none of
the next: a contender whose ratio is a target therefore times a round of the
reference before each of its own (``InTurn``), and its ratio is to that.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    table: str  # which summary table the row belongs to
    group: str  # rows of one group are compared with its "reference" row
    contender: str
    operations: int  # operations per round
    seconds: float  # best round
    reference_rate: float | None = None  # of the reference timed in turn with this figure's rounds

    @property
    def rate(self) -> float:
        return self.operations / self.seconds

    def ratio(self, reference: Figure | None) -> float | None:
        """This rate over the reference's: the one timed in turn with it, else ``reference``'s."""
        if self.reference_rate:
            return self.rate / self.reference_rate
        return self.rate / reference.rate if reference else None


class InTurn:
    """The reference's best round, timed just before each round of a contender."""

    def __init__(self, operations: int) -> None:
        self.operations = operations
        self.best = math.inf

    def time(self, round_: Callable[[], object]) -> None:
        started = time.perf_counter()
        round_()
        self.best = min(self.best, time.perf_counter() - started)

    @property
    def rate(self) -> float:
        return self.operations / self.best


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


def record(
    table: str,
    group: str,
    contender: str,
    operations: int,
    benchmark: object,
    *,
    reference: InTurn | None = None,
) -> None:
    stats = benchmark.stats.stats  # type: ignore[attr-defined]
    FIGURES.append(
        Figure(table, group, contender, operations, stats.min, reference.rate if reference else None)
    )


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
