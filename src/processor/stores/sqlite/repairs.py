"""The embedded store's side of the operator tools (``Repairs``).

A connection of its own, without the processor's claim on the file: the
tools run beside a live processor, and SQLite's one writer at a time keeps
each repair whole. A repair counts what it creates in the projections, in its
own transaction, and notes it in ``counted_apart`` so that a processor's
recount after a crash does not count it again.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from processor.models import DeadLetter, FilterFailure
from processor.projections import ProjectionDelta
from processor.stores.base import (
    MAX_EVENT_BYTES,
    CommitReport,
    FeedEntry,
    Repair,
    StoredFailure,
    StoredLetter,
    StoreUnavailable,
    SubscriptionChange,
)
from processor.stores.sqlite.feed import SqliteFeed
from processor.stores.sqlite.rows import (
    as_text,
    decode_subscription_row,
    parse_timestamp,
    texts_as_found,
    timestamp,
)
from processor.stores.sqlite.schema import SUBSCRIPTION_COLUMNS, connect, transaction
from processor.stores.sqlite.store import apply_delta, insert_filter_failures, insert_jobs

T = TypeVar("T")
MAX_SEQ = 2**63 - 1  # the largest integer SQLite holds


def _seq(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not (cursor.isascii() and cursor.isdigit()) or int(cursor) > MAX_SEQ:
        raise ValueError(f"{cursor!r} is not a position of the embedded store (a whole number)")
    return int(cursor)


class SqliteRepairs:
    def __init__(self, path: str | Path, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._connection = connect(path)
        self._lock = threading.Lock()  # fc-dev's API calls it from a pool of threads
        self._max_event_bytes = max_event_bytes

    def _read(self, read: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock, transaction(self._connection, immediate=False):
            try:
                return read(self._connection)
            except sqlite3.OperationalError as error:
                raise StoreUnavailable(f"sqlite: {error}") from error

    def current_subscriptions(self) -> list[SubscriptionChange]:
        def read(connection: sqlite3.Connection) -> list[SubscriptionChange]:
            with texts_as_found(connection):
                rows = connection.execute(
                    f"SELECT {', '.join(SUBSCRIPTION_COLUMNS)} FROM subscriptions ORDER BY rowid"
                ).fetchall()
            return [
                SubscriptionChange(
                    as_text(row["id"]),
                    decode_subscription_row(dict(zip(SUBSCRIPTION_COLUMNS, row, strict=True))),
                    -1,
                )
                for row in rows
            ]

        return self._read(read)

    def _entries(self, after: int, limit: int) -> list[FeedEntry]:
        """As the feed hands them out: an event over the size cap undecoded, unread."""
        feed = SqliteFeed(self._connection, after, threading.Event(), self._max_event_bytes)
        return feed.next_batch(limit, 0.0).entries

    def _at(self, seq: int) -> FeedEntry | None:
        found = self._read(lambda _: self._entries(seq - 1, 1))
        return found[0] if found and found[0].order == seq else None

    def event(self, event_id: str) -> FeedEntry | None:
        row = self._read(lambda c: c.execute("SELECT seq FROM events WHERE id = ?", (event_id,)).fetchone())
        return None if row is None else self._at(row[0])

    def events(self, after: str | None, since: datetime | None, limit: int) -> list[FeedEntry]:
        start = _seq(after)

        def read(connection: sqlite3.Connection) -> list[FeedEntry]:
            first = start
            if since is not None and after is None:  # received_at has no index: looked for once
                # None inserted since then: after the last event, so that nothing is read.
                (found,) = connection.execute(
                    "SELECT coalesce((SELECT min(seq) - 1 FROM events WHERE received_at >= ?), "
                    "(SELECT max(seq) FROM events), 0)",
                    (timestamp(since),),
                ).fetchone()
                first = found
            return self._entries(first, limit)

        return self._read(read)

    def letter_event(self, letter: DeadLetter) -> FeedEntry | None:
        return self._at(int(letter.position)) if letter.position.isdigit() else None

    def dead_letters(self, after: str | None, limit: int, event_id: str | None = None) -> list[StoredLetter]:
        def read(connection: sqlite3.Connection) -> list[StoredLetter]:
            rows = connection.execute(
                "SELECT seq, position, event_id, reason, raw, received_at, raw_bytes, raw_sha256 "
                "FROM dead_letters WHERE seq > ? AND (?3 IS NULL OR event_id = ?3) ORDER BY seq LIMIT ?2",
                (_seq(after), limit, event_id),
            )
            return [
                StoredLetter(
                    str(row["seq"]),
                    DeadLetter(
                        row["position"],
                        row["event_id"],
                        row["reason"],
                        row["raw"],
                        parse_timestamp(row["received_at"]),
                        row["raw_bytes"] or 0,
                        row["raw_sha256"] or "",
                    ),
                )
                for row in rows
            ]

        return self._read(read)

    def filter_failures(
        self,
        after: str | None,
        limit: int,
        *,
        event_id: str | None = None,
        subscription_id: str | None = None,
    ) -> list[StoredFailure]:
        def read(connection: sqlite3.Connection) -> list[StoredFailure]:
            rows = connection.execute(
                "SELECT seq, event_id, subscription_id, client_id, reason, failed_at FROM filter_failures "
                "WHERE seq > ?1 AND (?3 IS NULL OR event_id = ?3) AND (?4 IS NULL OR subscription_id = ?4) "
                "ORDER BY seq LIMIT ?2",
                (_seq(after), limit, event_id, subscription_id),
            )
            return [
                StoredFailure(
                    str(row["seq"]),
                    FilterFailure(
                        row["event_id"],
                        row["subscription_id"],
                        row["client_id"],
                        row["reason"],
                        parse_timestamp(row["failed_at"]),
                    ),
                )
                for row in rows
            ]

        return self._read(read)

    def repair(self, repair: Repair) -> CommitReport:
        connection = self._connection
        with self._lock, transaction(connection):
            (last,) = connection.execute("SELECT coalesce(max(seq), 0) FROM dispatch_jobs").fetchone()
            created = insert_jobs(connection, repair.jobs, repair.orders)
            insert_filter_failures(connection, repair.filter_failures)
            connection.executemany(
                "DELETE FROM dead_letters WHERE seq = ?", [(_seq(key),) for key in repair.letters]
            )
            connection.executemany(
                "DELETE FROM filter_failures WHERE seq = ?", [(_seq(key),) for key in repair.failures]
            )
            apply_delta(connection, ProjectionDelta.of(repair.events, created))
            connection.executemany(
                "INSERT OR IGNORE INTO counted_apart (kind, seq) VALUES ('event', ?)",
                [(key[0],) for key in repair.events],  # key[0]: the event's seq
            )
            connection.execute(
                "INSERT OR IGNORE INTO counted_apart (kind, seq) "
                "SELECT 'job', seq FROM dispatch_jobs WHERE seq > ?",
                (last,),
            )
        return CommitReport(len(created), len(repair.jobs) - len(created), created)

    def close(self) -> None:
        with self._lock:
            self._connection.close()
