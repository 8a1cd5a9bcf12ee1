"""What the processor knows of its own state, judged against documented
thresholds: the health endpoint answers 503 when the processor cannot do its
job, not merely when it has crashed.

DOWN when any of these holds (standbys are judged on none of them: waiting is
their job):
- the store has failed for longer than ``disconnected_grace`` seconds;
- the lag is over ``max_lag`` seconds;
- over the last ``window`` seconds, more than ``max_error_rate`` of the store
  operations failed (with at least ``min_operations`` of them).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from processor.config import Thresholds, redact


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
        self._role = "single"

    def set_role(self, role: str) -> None:
        with self._lock:
            self._role = role

    def connected(self) -> None:
        with self._lock:
            self._succeeded()

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
            if self._role != "standby":
                if not connected and down_for > limits.disconnected_grace:
                    reasons.append(f"store unreachable for {down_for:.0f}s")
                if self._lag > limits.max_lag:
                    reasons.append(f"lag {self._lag:.0f}s is over {limits.max_lag:.0f}s")
                if operations >= limits.min_operations and error_rate > limits.max_error_rate:
                    reasons.append(f"{error_rate:.0%} of store operations failed in {limits.window:.0f}s")
            return {
                "status": "DOWN" if reasons else "UP",
                "reasons": reasons,
                "role": self._role,
                "change_stream": {"connected": connected},
                "lag_seconds": self._lag,
                "error_rate": round(error_rate, 4),
                "errors_in_window": failures,
                "window_seconds": limits.window,
                "last_batch_at": self._last_batch_at.isoformat() if self._last_batch_at else None,
                "events_processed": self._events,
                "last_error": self._last_error,
            }
