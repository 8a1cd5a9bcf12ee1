"""What the processor knows of its own state, for the health endpoint."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass
class HealthReport:
    status: str  # "UP" or "DOWN"
    role: str  # "single", "leader" or "standby"
    connected: bool
    last_batch_at: float | None  # unix time
    events_processed: int
    last_error: str | None


class Health:
    """Updated by the loop; read by the HTTP thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connected = False
        self._last_batch_at: float | None = None
        self._events = 0
        self._last_error: str | None = None
        self._role = "single"

    def set_role(self, role: str) -> None:
        with self._lock:
            self._role = role

    def connected(self) -> None:
        with self._lock:
            self._connected = True

    def failed(self, operation: str, error: BaseException | None) -> None:
        with self._lock:
            self._connected = False
            self._last_error = f"{operation}: {error}"

    def batch_done(self, events: int) -> None:
        with self._lock:
            self._connected = True
            self._last_batch_at = time.time()
            self._events += events

    def report(self) -> HealthReport:
        with self._lock:
            return HealthReport(
                status="UP" if self._connected or self._role == "standby" else "DOWN",
                role=self._role,
                connected=self._connected,
                last_batch_at=self._last_batch_at,
                events_processed=self._events,
                last_error=self._last_error,
            )
