"""A background thread that does one small thing at a steady pace while a
``with`` block runs: renew a lock, watch for a stall."""

from __future__ import annotations

import threading
from typing import Self


class Periodic:
    """Calls ``tick`` every ``interval`` seconds in a daemon thread, from the
    ``with`` block's start to its end, or until ``tick`` returns False."""

    def __init__(self, interval: float, name: str) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def tick(self) -> bool:
        """One round of the work; False ends it."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval) and self.tick():
            pass
