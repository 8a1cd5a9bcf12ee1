"""What the driver does on its own, made visible: pymongo resumes a change
stream once by itself after a resumable error, and follows a new primary
without a word, so the loop's read errors and reconnects miss most failovers.
``DriverEvents`` listens to pymongo's command and server events and reports
those two moments through the callbacks it is given."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from pymongo import monitoring
from pymongo.server_type import SERVER_TYPE

RESUMABLE_LABEL = "ResumableChangeStreamError"
CURSOR_NOT_FOUND = 43


class DriverEvents(monitoring.CommandListener, monitoring.ServerListener):
    """``resumed()`` for each change stream read that failed in a way the driver
    resumes from (a network error, a resumable label, a lost cursor);
    ``elected()`` each time the primary the driver follows changes (another
    member, or the same after a new election)."""

    def __init__(self, resumed: Callable[[], None], elected: Callable[[], None]) -> None:
        self._resumed = resumed
        self._elected = elected
        self._lock = threading.Lock()
        self._streams: set[int] = set()  # ids of change stream cursors
        self._reading: dict[int, int] = {}  # getMore request id -> its stream's cursor id
        self._primary: Hashable | None = None

    def streams_followed(self) -> int:
        """How many change stream cursors it knows open: those the driver has not closed."""
        with self._lock:
            return len(self._streams)

    # -- commands --

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "killCursors":  # a stream closed
            with self._lock:
                self._streams.difference_update(event.command.get("cursors") or [])
        elif event.command_name == "getMore":
            with self._lock:
                cursor = event.command.get("getMore")
                if cursor in self._streams:
                    self._reading[event.request_id] = cursor

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        # A raw reply (the feed reads its events as BSON) is a mapping too.
        cursor = event.reply.get("cursor") if isinstance(event.reply, Mapping) else None
        with self._lock:
            self._reading.pop(event.request_id, None)
            if isinstance(cursor, Mapping) and "postBatchResumeToken" in cursor:
                if cursor.get("id"):
                    self._streams.add(cursor["id"])
                else:
                    self._streams.discard(cursor.get("id"))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        with self._lock:
            cursor = self._reading.pop(event.request_id, None)
            if cursor is not None:
                self._streams.discard(cursor)
        if cursor is not None and _resumable(event.failure):
            self._resumed()

    # -- servers --

    def opened(self, event: monitoring.ServerOpeningEvent) -> None:
        pass

    def closed(self, event: monitoring.ServerClosedEvent) -> None:
        pass

    def description_changed(self, event: monitoring.ServerDescriptionChangedEvent) -> None:
        new = event.new_description
        if new.server_type != SERVER_TYPE.RSPrimary:
            return
        primary = (new.address, new.election_id)
        with self._lock:
            changed = self._primary is not None and primary != self._primary
            self._primary = primary
        if changed:
            self._elected()


def _resumable(failure: Any) -> bool:
    """As pymongo decides whether to resume: errors raised on the client's side
    (the network) carry ``errtype``; the server's carry a label, or say the cursor is gone."""
    if not isinstance(failure, Mapping):
        return False
    return (
        "errtype" in failure
        or RESUMABLE_LABEL in (failure.get("errorLabels") or [])
        or failure.get("code") == CURSOR_NOT_FOUND
    )
