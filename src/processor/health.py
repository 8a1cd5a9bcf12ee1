"""What the processor knows of its own state, judged against documented
thresholds: the health endpoint answers 503 when the processor cannot do its
job, not merely when it has crashed.

DOWN when any of these holds (standbys are judged on none of them: waiting is
their job):
- the store has failed for longer than ``disconnected_grace`` seconds;
- the lag is over ``max_lag`` seconds;
- over the last ``window`` seconds, more than ``max_error_rate`` of the store
  operations failed (with at least ``min_operations`` of them);
- the processing thread has been in one step of its work (a read, one
  batch's matching, a commit) for longer than ``stall`` seconds without
  finishing it: a stall, which also makes ``/live`` fail, since only a restart
  can end it. The waits between the attempts at a store that fails are not
  counted: that store has a reason of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from processor.config import Thresholds, redact
from processor.periodic import Periodic

log = logging.getLogger(__name__)


class Health:
    """Updated by the loop; read by the HTTP thread."""

    def __init__(
        self, thresholds: Thresholds | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.thresholds = thresholds or Thresholds()
        self._clock = clock
        self._lock = threading.Lock()
        self._failing_since: float | None = None
        self._ever_connected = False
        self._started = clock()
        self._outcomes: deque[tuple[float, bool]] = deque()  # (when, succeeded)
        self._last_batch_at: datetime | None = None
        self._lag = 0.0
        self._events = 0
        self._last_error: str | None = None
        self._role: Callable[[], str] = lambda: "single"
        # Written by the processing thread without the lock, once per event for
        # ``_where``: each is one attribute, read whole by the other threads.
        self._step_since: float | None = None
        self._paused: float | None = None  # when the step that waits to retry began
        self._step = ""
        self._where: str | None = None

    def follow(self, role: Callable[[], str]) -> None:
        """Report the role ``role()`` says at each moment: a leader's follows its lock."""
        self._role = role

    def connected(self) -> None:
        with self._lock:
            self._succeeded()

    def step(self, step: str) -> None:
        """The processing thread begins a step of its work."""
        self._step, self._where = step, None
        self._step_since = self._clock()

    def at(self, position: str) -> None:
        """... and is at this event of it."""
        self._where = position

    def rest(self) -> None:
        """The processing thread stopped working: stopped, or standing by."""
        self._step_since = self._paused = None

    def pause(self) -> None:
        """The processing thread waits to retry a store that failed (which has
        reasons of its own): not a stall."""
        self._paused, self._step_since = self._step_since, None

    def resume(self) -> None:
        """The processing thread takes up the step it paused, if any."""
        if self._paused is not None:
            self._step_since, self._paused = self._clock(), None

    def stall(self) -> str | None:
        """What the processing thread is stuck at, once it has been in one step
        for longer than the threshold; None while it makes progress."""
        since = self._step_since
        if since is None:
            return None
        seconds = self._clock() - since
        if seconds <= self.thresholds.stall:
            return None
        where = self._where
        return f"stalled for {seconds:.0f}s {self._step}" + (f", at event {where}" if where else "")

    def failed(self, operation: str, error: BaseException | None) -> None:
        with self._lock:
            now = self._clock()
            if self._failing_since is None:
                self._failing_since = now
            self._outcomes.append((now, False))
            self._last_error = redact(f"{operation}: {error}")

    def batch_done(self, events: int, lag: float) -> None:
        with self._lock:
            self._succeeded()
            self._last_batch_at = datetime.now(UTC)
            self._events += events
            self._lag = lag

    def caught_up(self) -> None:
        with self._lock:
            self._lag = 0.0

    def _succeeded(self) -> None:
        self._failing_since = None
        self._ever_connected = True
        self._outcomes.append((self._clock(), True))

    def report(self) -> dict[str, Any]:
        """The health document; ``status`` is "UP" or "DOWN", with the reasons."""
        with self._lock:
            now = self._clock()
            limits = self.thresholds
            while self._outcomes and self._outcomes[0][0] < now - limits.window:
                self._outcomes.popleft()
            failures = sum(1 for _, ok in self._outcomes if not ok)
            operations = len(self._outcomes)
            error_rate = failures / operations if operations else 0.0
            connected = self._ever_connected and self._failing_since is None
            down_for = now - (self._failing_since if self._failing_since is not None else self._started)
            reasons = []
            role = self._role()
            if role != "standby":
                if not connected and down_for > limits.disconnected_grace:
                    reasons.append(f"store unreachable for {down_for:.0f}s")
                if self._lag > limits.max_lag:
                    reasons.append(f"lag {self._lag:.0f}s is over {limits.max_lag:.0f}s")
                if operations >= limits.min_operations and error_rate > limits.max_error_rate:
                    reasons.append(f"{error_rate:.0%} of store operations failed in {limits.window:.0f}s")
            stall = self.stall()
            if stall is not None:
                reasons.append(stall)
            return {
                "status": "DOWN" if reasons else "UP",
                "reasons": reasons,
                "role": role,
                "change_stream": {"connected": connected},
                "lag_seconds": self._lag,
                "error_rate": round(error_rate, 4),
                "errors_in_window": failures,
                "window_seconds": limits.window,
                "last_batch_at": self._last_batch_at.isoformat() if self._last_batch_at else None,
                "events_processed": self._events,
                "last_error": self._last_error,
                "stalled": stall,
            }


class Watchdog(Periodic):
    """Logs a stall of the processing thread when it begins and when it ends:
    the thread that is stuck cannot say so itself."""

    def __init__(self, health: Health, interval: float = 1.0) -> None:
        super().__init__(interval, "watchdog")
        self._health = health
        self._stalled = False

    def tick(self) -> bool:
        stall = self._health.stall()
        if stall is not None and not self._stalled:
            log.error("processing %s; /live and /health answer 503 until it moves on", stall)
        elif stall is None and self._stalled:
            log.warning("processing moves again")
        self._stalled = stall is not None
        return True
