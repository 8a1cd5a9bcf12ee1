"""The embedded store as the HTTP API sees it: events in, subscriptions, and the
processor's output (dispatch jobs, dead letters, projections) out.

Events are only ever inserted into ``events``: the processor finds them through
its change feed, exactly as it finds events that other services insert, so the
API exercises the production path. One connection per catalog, behind a lock,
because the API calls it from a pool of threads.
"""

from __future__ import annotations

import json
import math
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from processor.models import Subscription, SubscriptionFields, SubscriptionPatch, describe
from processor.stores.sqlite.rows import (
    JOB_COLUMNS,
    as_text,
    decode_subscription_row,
    texts_as_found,
    timestamp,
)
from processor.stores.sqlite.schema import (
    EVENT_COLUMNS,
    JSON_COLUMNS,
    SUBSCRIPTION_COLUMNS,
    connect,
    transaction,
)

WRITABLE_COLUMNS = tuple(column for column in SUBSCRIPTION_COLUMNS if column != "id")
DEAD_LETTER_COLUMNS = (
    "position",
    "event_id",
    "reason",
    "raw",
    "raw_bytes",
    "raw_sha256",
    "received_at",
    "created_at",
)
FILTER_FAILURE_COLUMNS = ("event_id", "subscription_id", "client_id", "reason", "failed_at")
NOT_STORED = object()  # a filter's value: the column IS NULL (spelled out, so that a partial index serves it)
LOOKUP_CHUNK = 500  # ids a lookup binds at once (SQLite allows 32,766 parameters)
PAGE_BYTES = 4 * 1024 * 1024  # a page ends once its rows hold this much text (UTF-8), whatever its limit
JSON_TEXT_COLUMNS = (*JSON_COLUMNS, "filters")
RECENT_EVENT_COLUMNS = ("id", "type", "client_id", "source", "time", "received_at")
JOBS_SHOWN = 100  # of one event's jobs in a list of events: a client may have thousands of subscriptions
INSERT_EVENT = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
)


class EventExists(Exception):
    """An event of the batch has an id that is taken, by a stored event or an earlier one of the batch."""

    def __init__(self, event_id: str, index: int) -> None:
        super().__init__(f"an event with id {event_id!r} exists already")
        self.event_id = event_id
        self.index = index  # position in the batch


@dataclass(frozen=True, slots=True)
class InvalidSubscription:
    """A stored row, written around the API, that breaks the contract: shown as
    stored, with why, so that an operator can see it and fix or delete it;
    the processor refuses it (and counts it in ``fc_stream_subscriptions_invalid_total``)."""

    id: str
    stored: dict[str, Any]  # its columns, as JSON can carry them
    reason: str


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next: int | None  # pass as ``after`` for the next page; None on the last one


def subscription_document(subscription: SubscriptionFields | InvalidSubscription) -> dict[str, Any]:
    """A subscription as JSON, its filters exactly as written: a condition's
    ``value`` left out stays left out, so the document validates again. An
    invalid one is its stored columns and ``invalid``, the reason."""
    if isinstance(subscription, InvalidSubscription):
        return {**subscription.stored, "id": subscription.id, "invalid": subscription.reason}
    filters = subscription.filters
    return {
        **subscription.model_dump(mode="json", exclude={"filters"}),
        "filters": None if filters is None else filters.model_dump(mode="json", exclude_unset=True),
    }


class Catalog:
    def __init__(self, path: str | Path, wakeup: threading.Event | None = None) -> None:
        self._connection = connect(path)
        self._lock = threading.Lock()
        self._wakeup = wakeup  # the processor's: set after inserting events to cut its idle wait short

    @contextmanager
    def _session(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        with self._lock, transaction(self._connection, immediate=write):
            yield self._connection

    # Events

    def insert_events(self, events: Sequence[Mapping[str, Any]]) -> list[str]:
        """Insert valid events (the contract's fields; ``id`` and ``time`` may be
        None) in one transaction and return their ids; all or none are written."""
        ids = [generated_id() if event.get("id") is None else event["id"] for event in events]
        rows = [_event_row(event_id, event) for event_id, event in zip(ids, events, strict=True)]
        with self._session(write=True) as connection:
            # Looked for first, in the write transaction (no other writer can take
            # an id meanwhile), so that the rows then go in with one statement.
            taken = _first_taken(connection, ids)
            if taken is not None:
                raise EventExists(ids[taken], taken)
            connection.executemany(INSERT_EVENT, rows)
        if self._wakeup is not None:
            self._wakeup.set()
        return ids

    # Subscriptions

    def create_subscription(self, fields: SubscriptionFields) -> Subscription:
        document = subscription_document(fields)
        with self._session(write=True) as connection:
            subscription_id = secrets.token_hex(16)
            connection.execute(
                f"INSERT INTO subscriptions (id, {', '.join(WRITABLE_COLUMNS)}) "
                f"VALUES (?, {', '.join('?' * len(WRITABLE_COLUMNS))})",
                (subscription_id, *_subscription_row(document)),
            )
        return Subscription.model_validate({**document, "id": subscription_id})

    def subscriptions(self, client_id: str | None = None) -> list[Subscription | InvalidSubscription]:
        with self._session(write=False) as connection, texts_as_found(connection):
            rows = connection.execute(
                "SELECT * FROM subscriptions WHERE ? IS NULL OR client_id = ? ORDER BY rowid",
                (client_id, client_id),
            ).fetchall()
        return [_subscription(row) for row in rows]

    def subscription(self, subscription_id: str) -> Subscription | InvalidSubscription | None:
        with self._session(write=False) as connection, texts_as_found(connection):
            row = _subscription_row_by_id(connection, subscription_id)
        return None if row is None else _subscription(row)

    def update_subscription(self, subscription_id: str, patch: SubscriptionPatch) -> Subscription | None:
        """Apply ``patch`` and validate the result as a whole; ``ValidationError``
        when it breaks the contract (nothing is written then), None when there is
        no such subscription."""
        with self._session(write=True) as connection:
            with texts_as_found(connection):
                row = _subscription_row_by_id(connection, subscription_id)
            if row is None:
                return None
            merged = Subscription.model_validate({**_stored(row), **patch.model_dump(exclude_unset=True)})
            document = subscription_document(merged)
            connection.execute(
                f"UPDATE subscriptions SET {', '.join(f'{column} = ?' for column in WRITABLE_COLUMNS)}, "
                "updated_at = ? WHERE id = ?",
                (*_subscription_row(document), timestamp(datetime.now(UTC)), subscription_id),
            )
        return merged

    def delete_subscription(self, subscription_id: str) -> bool:
        with self._session(write=True) as connection:
            deleted = connection.execute("DELETE FROM subscriptions WHERE id = ?", (subscription_id,))
        return deleted.rowcount > 0

    def recent_events(self, *, before: int | None = None, limit: int) -> Page:
        """The newest events first, before the cursor, each with the first
        ``JOBS_SHOWN`` jobs made of it so far and how many there are; bounded by
        ``PAGE_BYTES`` as ``_page`` is, since a row written around the API may
        hold any text. ``next`` is the cursor of older events (pass as ``before``)."""
        with self._session(write=False) as connection:
            # As bytes: a row written around the API may hold text that is not UTF-8,
            # which would fail the whole page; ``_text`` decodes what it can.
            selected = ", ".join(f"CAST({column} AS BLOB) AS {column}" for column in RECENT_EVENT_COLUMNS)
            rows = connection.execute(
                f"SELECT seq, {selected} FROM events WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                (before or 2**63 - 1, limit + 1),
            )

            def item(row: sqlite3.Row) -> dict[str, Any]:
                event = {column: _text(row[column]) for column in RECENT_EVENT_COLUMNS}
                return {"position": row["seq"], **event, **self._jobs_of(connection, row["seq"])}

            return _bounded(rows, limit, item)

    @staticmethod
    def _jobs_of(connection: sqlite3.Connection, seq: int) -> dict[str, Any]:
        jobs = connection.execute(
            "SELECT id, subscription_id, status FROM dispatch_jobs WHERE event_seq = ? ORDER BY seq LIMIT ?",
            (seq, JOBS_SHOWN),
        ).fetchall()
        total = len(jobs)
        if total == JOBS_SHOWN:
            (total,) = connection.execute(
                "SELECT count(*) FROM dispatch_jobs WHERE event_seq = ?", (seq,)
            ).fetchone()
        return {"jobs": [dict(job) for job in jobs], "jobs_total": total}

    # What the processor wrote

    def dispatch_jobs(
        self,
        *,
        after: int | None = None,
        limit: int,
        event_id: str | None = None,
        subscription_id: str | None = None,
        client_id: str | None = None,
        status: str | None = None,
    ) -> Page:
        filters: dict[str, object] = {
            "event_id": event_id,
            "subscription_id": subscription_id,
            "client_id": client_id,
            "status": status,
        }
        if event_id is not None:
            # Jobs are indexed by their event's seq (the feed's order), not its id;
            # a job whose event is not stored has none, in an index of its own.
            with self._session(write=False) as connection:
                found = connection.execute("SELECT seq FROM events WHERE id = ?", (event_id,)).fetchone()
            filters["event_seq"] = NOT_STORED if found is None else found[0]
        return self._page("dispatch_jobs", JOB_COLUMNS, filters, after, limit)

    def dead_letters(self, *, after: int | None = None, limit: int) -> Page:
        return self._page("dead_letters", DEAD_LETTER_COLUMNS, {}, after, limit)

    def filter_failures(
        self,
        *,
        after: int | None = None,
        limit: int,
        event_id: str | None = None,
        subscription_id: str | None = None,
    ) -> Page:
        filters = {"event_id": event_id, "subscription_id": subscription_id}
        return self._page("filter_failures", FILTER_FAILURE_COLUMNS, filters, after, limit)

    def _page(
        self,
        table: str,
        columns: Sequence[str],
        filters: Mapping[str, object],
        after: int | None,
        limit: int,
    ) -> Page:
        """Rows in ``seq`` order after the cursor, those filters that are given all
        holding: at most ``limit``, and no more once they hold ``PAGE_BYTES`` of
        text (the row that passes it ends the page), so that a response's size
        does not follow the limit. Read row by row: of the rows past the page,
        SQLite reads one ahead at most."""
        given = {column: value for column, value in filters.items() if value is not None}
        conditions = " ".join(
            f"AND {column} IS NULL" if value is NOT_STORED else f"AND {column} = ?"
            for column, value in given.items()
        )
        given = {column: value for column, value in given.items() if value is not NOT_STORED}
        with self._session(write=False) as connection:
            rows = connection.execute(
                f"SELECT seq, {', '.join(columns)} FROM {table} "
                f"WHERE seq > ? {conditions} ORDER BY seq LIMIT ?",
                (after or 0, *given.values(), limit + 1),
            )
            return _bounded(rows, limit, lambda row: {column: row[column] for column in columns})

    def stats(self) -> dict[str, Any]:
        """The projections, read together so that they agree with each other."""
        with self._session(write=False) as connection:
            types = connection.execute("SELECT type, count FROM event_type_counts ORDER BY type").fetchall()
            subscriptions = connection.execute(
                "SELECT subscription_id, jobs_created, last_matched_at FROM subscription_stats "
                "ORDER BY subscription_id"
            ).fetchall()
            clients = connection.execute(
                "SELECT client_id, events, jobs, last_event_time FROM client_activity ORDER BY client_id"
            ).fetchall()
        return {
            "event_types": {row["type"]: row["count"] for row in types},
            "subscriptions": {
                row["subscription_id"]: {
                    "jobs_created": row["jobs_created"],
                    "last_matched_at": row["last_matched_at"],
                }
                for row in subscriptions
            },
            "clients": {
                row["client_id"]: {
                    "events": row["events"],
                    "jobs": row["jobs"],
                    "last_event_time": row["last_event_time"],
                }
                for row in clients
            },
        }

    def close(self) -> None:
        with self._lock:
            self._connection.close()


def _bounded(rows: Iterable[sqlite3.Row], limit: int, item: Callable[[sqlite3.Row], dict[str, Any]]) -> Page:
    """``item`` of each of ``rows``, at most ``limit``, and no more once they
    hold ``PAGE_BYTES`` of text (the item that passes it ends the page);
    ``next``: the last row's ``seq``."""
    items: list[dict[str, Any]] = []
    size, last, more = 0, None, False
    for row in rows:
        if len(items) == limit or (items and size > PAGE_BYTES):
            more = True
            break
        items.append(item(row))
        size += sum(len(text.encode()) for text in _texts(items[-1]))
        last = row["seq"]
    return Page(items=items, next=last if more else None)


def _texts(value: object) -> Iterator[str]:
    """Every text in a JSON-like value, however nested (a recent event's jobs)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for inner in value.values():
            yield from _texts(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _texts(inner)


def _text(value: object) -> str | None:
    """A column as JSON text: a row written around the API may hold a number or bytes."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def generated_id() -> str:
    """An event id for an event given without one: 32 hex digits, as the schema's
    default, but in time order (UUIDv7's layout: the milliseconds, then 80 random
    bits). A batch's ids then land at the right-hand end of the id index rather
    than in a page each, which made every page a batch touched part of its commit."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


def _first_taken(connection: sqlite3.Connection, ids: Sequence[str]) -> int | None:
    """The index of the first id that is stored already, or given earlier in ``ids``.
    Bound as parameters, in chunks under SQLite's limit: an id is any text (JSON
    would cut one at a NUL)."""
    stored: set[str] = set()
    for start in range(0, len(ids), LOOKUP_CHUNK):
        chunk = ids[start : start + LOOKUP_CHUNK]
        query = f"SELECT id FROM events WHERE id IN ({', '.join('?' * len(chunk))})"
        stored.update(row[0] for row in connection.execute(query, chunk))
    seen: set[str] = set()
    for index, event_id in enumerate(ids):
        if event_id in stored or event_id in seen:
            return index
        seen.add(event_id)
    return None


def _event_row(event_id: str, event: Mapping[str, Any]) -> tuple[Any, ...]:
    """The ``events`` row as any publisher would write it; a ``time`` left out is
    NULL, and the processor then takes the insert time."""
    return tuple(
        _encode(column, event_id if column == "id" else event.get(column)) for column in EVENT_COLUMNS
    )


def _subscription_row(document: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(_encode(column, document[column]) for column in WRITABLE_COLUMNS)


def _encode(column: str, value: Any) -> Any:
    """A value as the store keeps it: JSON as text, booleans as 0/1, times as timestamps."""
    if value is None:
        return None
    if column in JSON_TEXT_COLUMNS:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)  # the models refuse NaN first
    if column == "active":
        return int(value)
    if column == "time":
        return timestamp(value)
    return value


def _subscription_row_by_id(connection: sqlite3.Connection, subscription_id: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = connection.execute(
        "SELECT * FROM subscriptions WHERE id = ?", (subscription_id,)
    ).fetchone()
    return row


def _stored(row: sqlite3.Row) -> dict[str, Any]:
    """A stored row decoded as far as it goes; what cannot be decoded is left for
    validation to reject with a reason."""
    return decode_subscription_row({column: row[column] for column in SUBSCRIPTION_COLUMNS})


def _subscription(row: sqlite3.Row) -> Subscription | InvalidSubscription:
    document = _stored(row)
    try:
        return Subscription.model_validate(document)
    except ValidationError as error:
        shown = {column: _shown(value) for column, value in document.items() if column != "id"}
        return InvalidSubscription(as_text(row["id"]), shown, describe(error))


def _shown(value: Any) -> Any:
    """A stored value as JSON can carry it: bytes and numbers JSON has not as text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value
