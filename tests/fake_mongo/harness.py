"""Running a processor on the fake: a token store that keeps what it saves, a
metric reader, and a processor thread."""

from __future__ import annotations

import threading

from processor.loop import Processor, Settings
from processor.metrics import Metrics
from processor.stores.base import Store
from processor.stores.mongo import Checkpoint
from tests.processor.harness import FAST, wait_until


class Tokens:
    """A token store in memory that keeps every value saved."""

    def __init__(self, value: str | None = None) -> None:
        self.value = value
        self.saved: list[str] = []

    def load(self) -> str | None:
        return self.value

    def save(self, token: str) -> None:
        self.saved.append(token)
        self.value = token

    def fence(self, epoch: int, holder: str) -> None:
        """One instance per test: nobody to fence off."""

    def checkpoint(self) -> Checkpoint | None:
        return Checkpoint.loads(self.value)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """The sum of a metric's samples that carry ``labels`` (counters by their
    exposed name, ``..._total``)."""
    return sum(
        s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


class Running:
    """A processor thread on ``store``; entered, it has committed its first batch
    (on a first start: its starting point)."""

    def __init__(self, store: Store, tokens: Tokens, metrics: Metrics, settings: Settings = FAST) -> None:
        self.processor = Processor(store, settings, metrics)
        self._tokens = tokens
        self._thread = threading.Thread(target=self.processor.run, daemon=True)

    def __enter__(self) -> Processor:
        saved = len(self._tokens.saved)
        self._thread.start()
        wait_until(lambda: len(self._tokens.saved) > saved, message="the first batch")
        return self.processor

    def __exit__(self, *exc: object) -> None:
        self.processor.stop()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "the processor did not stop"
