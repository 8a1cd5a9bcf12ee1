"""The embedded store: SQLite in WAL mode, for development, tests and `fc-dev`.

The ``events`` table's ``seq`` is the change feed: SQLite lets one writer
commit at a time, so ``seq`` grows in commit order and a reader that has seen
``seq`` N has seen everything committed before it. Any process may insert
events with plain SQL. A batch's jobs, dead letters and resume token are
written in one transaction, so a crash either keeps all of it or none. The
projections are written less often: with every batch once the feed has caught
up, every few batches while it is behind. Marks say what was committed and
what was counted; a start counts what lies between them, so a crash neither
loses a count nor makes one twice.
"""

from __future__ import annotations

import codecs
import json
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import fields
from datetime import UTC, datetime
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from pydantic_core import from_json

from processor.models import MAX_ID_LENGTH, DeadLetter, DispatchJob, FilterFailure, InvalidEvent
from processor.projections import EventKey, ProjectionDelta, event_key
from processor.store import (
    BATCH_BYTES,
    MAX_EVENT_BYTES,
    Batch,
    CommitReport,
    FeedEntry,
    Fenced,
    ProcessedBatch,
    ResumeToken,
    StoreUnavailable,
    SubscriptionChange,
)

RESUME_KEY = "stream-processor"
BUSY_TIMEOUT_MS = 1000
POLL_INTERVAL = 0.01  # seconds between looks for new events when idle
FOLD_EVENTS = 2_000  # while the feed is behind, projections wait for this many events

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE DEFAULT (lower(hex(randomblob(16)))),
    type           TEXT,
    client_id      TEXT,
    source         TEXT,
    time           TEXT,
    data           TEXT,
    metadata       TEXT,
    subject        TEXT,
    correlation_id TEXT,
    causation_id   TEXT,
    received_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS events_type ON events (type);
CREATE INDEX IF NOT EXISTS events_client_time ON events (client_id, time);

CREATE TABLE IF NOT EXISTS subscriptions (
    id                 TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(16)))),
    client_id          TEXT,
    name               TEXT,
    event_type_pattern TEXT,
    target             TEXT,
    pool_code          TEXT,
    active             INTEGER NOT NULL DEFAULT 1,
    filters            TEXT,
    created_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS subscriptions_client_active ON subscriptions (client_id, active);

-- Every write to subscriptions, however made, is logged here with the row as it
-- became (NULL once deleted) and the last event committed before it: the change
-- applies to later events only, so events are matched against the subscriptions
-- of the moment they were inserted, whatever the processor's lag.
CREATE TABLE IF NOT EXISTS subscription_changes (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT NOT NULL,
    events_seq      INTEGER NOT NULL,
    document        TEXT
);
CREATE INDEX IF NOT EXISTS subscription_changes_events_seq ON subscription_changes (events_seq);
CREATE TRIGGER IF NOT EXISTS subscriptions_inserted AFTER INSERT ON subscriptions BEGIN
    INSERT INTO subscription_changes (subscription_id, events_seq, document)
    VALUES (NEW.id, (SELECT coalesce(max(seq), 0) FROM events), SUBSCRIPTION_DOCUMENT);
END;
CREATE TRIGGER IF NOT EXISTS subscriptions_updated AFTER UPDATE ON subscriptions BEGIN
    INSERT INTO subscription_changes (subscription_id, events_seq, document)
    SELECT OLD.id, (SELECT coalesce(max(seq), 0) FROM events), NULL WHERE NEW.id IS NOT OLD.id;
    INSERT INTO subscription_changes (subscription_id, events_seq, document)
    VALUES (NEW.id, (SELECT coalesce(max(seq), 0) FROM events), SUBSCRIPTION_DOCUMENT);
END;
CREATE TRIGGER IF NOT EXISTS subscriptions_deleted AFTER DELETE ON subscriptions BEGIN
    INSERT INTO subscription_changes (subscription_id, events_seq, document)
    VALUES (OLD.id, (SELECT coalesce(max(seq), 0) FROM events), NULL);
END;

CREATE TABLE IF NOT EXISTS dispatch_jobs (
    seq             INTEGER PRIMARY KEY,
    id              TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    client_id       TEXT NOT NULL,
    status          TEXT NOT NULL,
    target          TEXT NOT NULL,
    pool_code       TEXT NOT NULL,
    scheduled_at    TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    last_attempt_at TEXT,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    UNIQUE (event_id, subscription_id)
);
CREATE INDEX IF NOT EXISTS dispatch_jobs_status_scheduled ON dispatch_jobs (status, scheduled_at);
CREATE INDEX IF NOT EXISTS dispatch_jobs_client ON dispatch_jobs (client_id);

-- raw holds at most the first 64 KiB of the event as stored; raw_bytes and
-- raw_sha256 describe all of it (NULL in dead letters from before they existed).
CREATE TABLE IF NOT EXISTS dead_letters (
    seq         INTEGER PRIMARY KEY,
    position    TEXT NOT NULL UNIQUE,
    event_id    TEXT,
    reason      TEXT NOT NULL,
    raw         TEXT NOT NULL,
    received_at TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    raw_bytes   INTEGER,
    raw_sha256  TEXT
);

-- (event, subscription) pairs whose filter failed: not matched, kept to be driven again.
CREATE TABLE IF NOT EXISTS filter_failures (
    seq             INTEGER PRIMARY KEY,
    event_id        TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    client_id       TEXT NOT NULL,
    reason          TEXT NOT NULL,
    failed_at       TEXT NOT NULL,
    UNIQUE (event_id, subscription_id)
);

-- Keyed by text and updated on every batch: WITHOUT ROWID keeps each upsert to one b-tree.
CREATE TABLE IF NOT EXISTS event_type_counts (
    type  TEXT PRIMARY KEY,
    count INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subscription_stats (
    subscription_id TEXT PRIMARY KEY,
    jobs_created    INTEGER NOT NULL,
    last_matched_at TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS client_activity (
    client_id       TEXT PRIMARY KEY,
    events          INTEGER NOT NULL,
    jobs            INTEGER NOT NULL,
    last_event_time TEXT
) WITHOUT ROWID;

-- Per processor (its resume key; one per store file): the last event of the
-- last batch it committed, and the last event and job its projections counted.
-- Kept apart from the resume token, which an operator may move: a start counts
-- the events between counted_seq and committed_seq, and the jobs after jobs_seq.
CREATE TABLE IF NOT EXISTS projection_marks (
    key           TEXT PRIMARY KEY,
    committed_seq INTEGER NOT NULL,
    counted_seq   INTEGER NOT NULL,
    jobs_seq      INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS resume_tokens (
    key        TEXT PRIMARY KEY,
    token      TEXT NOT NULL,
    epoch      INTEGER,  -- the leader's fencing epoch; NULL without leader election
    updated_at TEXT NOT NULL,
    holder     TEXT      -- the lock holder that wrote it under that epoch
);
"""

SUBSCRIPTION_COLUMNS = (
    "id",
    "client_id",
    "name",
    "event_type_pattern",
    "target",
    "pool_code",
    "active",
    "filters",
)
# The row as JSON; filters that are JSON text are embedded as JSON, anything else as it is.
SCHEMA = SCHEMA.replace(
    "SUBSCRIPTION_DOCUMENT",
    "json_object("
    + ", ".join(
        f"'{c}', CASE WHEN json_valid(NEW.{c}) THEN json(NEW.{c}) ELSE NEW.{c} END"
        if c == "filters"
        else f"'{c}', NEW.{c}"
        for c in SUBSCRIPTION_COLUMNS
    )
    + ")",
)

EVENT_COLUMNS = (
    "id",
    "type",
    "client_id",
    "source",
    "time",
    "data",
    "metadata",
    "subject",
    "correlation_id",
    "causation_id",
)
JSON_COLUMNS = ("data", "metadata")
JOB_COLUMNS = tuple(field.name for field in fields(DispatchJob))
_TIME_COLUMNS = tuple(n for n, f in enumerate(fields(DispatchJob)) if "datetime" in str(f.type))
INSERT_JOB = (
    f"INSERT OR IGNORE INTO dispatch_jobs ({', '.join(JOB_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(JOB_COLUMNS))})"
)


@lru_cache(maxsize=4096)
def timestamp(moment: datetime) -> str:
    """One fixed-width UTC format (``2025-03-01T12:00:00.000000Z``), so that stored
    times also sort as text; ``isoformat`` pads every year to four digits, where
    ``strftime`` does not, and takes two thirds of the time.

    Memoized: a batch's jobs share one ``now`` (twice each), and formatting was
    the largest Python cost of writing a job. Equal datetimes are the same instant."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").removesuffix("+00:00") + "Z"


@lru_cache(maxsize=4096)  # events inserted together share their received_at
def parse_timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, schema in place."""
    connection = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    connection.execute("PRAGMA foreign_keys = ON")
    connection.executescript(SCHEMA)
    _add_columns(connection, "dead_letters", {"raw_bytes": "INTEGER", "raw_sha256": "TEXT"})
    _add_columns(connection, "resume_tokens", {"holder": "TEXT"})
    return connection


def _add_columns(connection: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """Columns added since a store file was made, added to it in place."""

    def missing() -> list[str]:
        present = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
        return [name for name in columns if name not in present]

    if missing():
        with transaction(connection):
            for name in missing():  # again: another connection may have added them meanwhile
                connection.execute(f"ALTER TABLE {table} ADD COLUMN {name} {columns[name]}")


@contextmanager
def transaction(connection: sqlite3.Connection, *, immediate: bool = True) -> Iterator[None]:
    """BEGIN ... COMMIT, or ROLLBACK on any error; a locked or failed database
    surfaces as ``StoreUnavailable`` so that callers retry."""
    try:
        connection.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
    except sqlite3.OperationalError as error:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise StoreUnavailable(f"sqlite: {error}") from error


FEED_COLUMNS = ("seq", "received_at", *EVENT_COLUMNS)
# The bytes an event takes as stored: what a batch's budget and the size cap count.
EVENT_BYTES = " + ".join(f"coalesce(length(CAST({column} AS BLOB)), 0)" for column in FEED_COLUMNS[1:])
READ_SIZES = f"SELECT seq, {EVENT_BYTES} FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
READ_RANGE = f"SELECT {', '.join(FEED_COLUMNS)} FROM events WHERE seq > ? AND seq <= ? ORDER BY seq"
RAW_CHUNK = 1024 * 1024  # bytes of a large value read at a time
# A JSON text decodes to up to 30 times its size ([[],[],...]): a large one is
# decoded only if it holds at most this many values (about 200 MiB of Python).
MAX_JSON_VALUES = 2_000_000
LARGE_JSON = 1024 * 1024  # characters from which a text's values are counted first


def _raw(row: tuple[Any, ...]) -> tuple[str]:
    return (json.dumps(dict(zip(FEED_COLUMNS, row, strict=True)), ensure_ascii=False, default=_bytes_text),)


def _bytes_text(value: bytes) -> str:
    """Bytes as ``b'...'``, escaped byte by byte, so that pieces of a blob read
    apart give the same text as the whole."""
    return f"b'{_escaped(value)}'"


def _escaped(value: bytes) -> str:
    return value.decode("latin-1").encode("unicode_escape").decode("ascii")


class _LongNumber(ValueError):
    pass


def _parse_int(text: str) -> int:
    # Python refuses longer integer texts: converting them takes quadratic time.
    if len(text) - text.startswith("-") > sys.get_int_max_str_digits():
        raise _LongNumber
    return int(text)


def _loads(text: str) -> Any:
    """JSON text as Python's ``json`` reads it, about five times faster; a
    ``ValueError`` says what stops it.

    pydantic-core's parser agrees with ``json`` on every text both accept (the
    feed's tests hold it to that); the texts it refuses go to ``json``, which
    accepts a few more (lone surrogate escapes, nesting deeper than 200) and
    words its errors as the dead letters have always said them. NaN and
    Infinity, which ``json`` reads, are taken as it reads them."""
    if len(text) > LARGE_JSON:
        values = text.count(",") + text.count("[") + text.count("{")  # at least, as many as it holds
        if values > MAX_JSON_VALUES:
            raise ValueError(
                f"holds up to {values} JSON values (counting its commas, brackets and braces); "
                f"at most {MAX_JSON_VALUES} are decoded, which bounds the memory an event takes"
            )
    try:
        return from_json(text)
    except (ValueError, TypeError):  # TypeError: a lone surrogate in the text
        pass
    try:
        return json.loads(text, parse_int=_parse_int)
    except _LongNumber:
        limit = sys.get_int_max_str_digits()
        raise ValueError(
            f"valid JSON, but it holds an integer of more than {limit} digits, "
            "which the processor does not read (converting one takes quadratic time)"
        ) from None
    except RecursionError:
        raise ValueError("not valid JSON (nested too deeply)") from None
    except ValueError as error:
        raise ValueError(f"not valid JSON ({error})") from None


class NotUtf8(bytes):
    """A stored text that is not UTF-8, as the feed's second read gives it back."""


def _utf8_or_marked(value: bytes) -> str | NotUtf8:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return NotUtf8(value)


def _received_at(value: object) -> datetime | None:
    try:
        return parse_timestamp(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: past year 9999 in UTC
        return None


def _decode(row: tuple[Any, ...], problem: str | None = None) -> FeedEntry:
    """A row of ``READ_RANGE`` as the loop takes it (a plain tuple, which reads far
    faster than a ``sqlite3.Row``); with a ``problem``, undecodable."""
    seq, received = row[0], row[1]
    received_at = _received_at(received)
    if received_at is None:
        return _undecodable(row, f"received_at: not a time ({received!r})", datetime.now(UTC))
    if problem is not None:
        return _undecodable(row, problem, received_at)
    values = zip(EVENT_COLUMNS, row[2:], strict=True)
    document = {column: value for column, value in values if value is not None}
    for column in JSON_COLUMNS:
        if column not in document:
            continue
        if not isinstance(document[column], str):
            problem = f"{column}: must be JSON text, got {type(document[column]).__name__}"
            return _undecodable(row, problem, received_at)
        try:
            document[column] = _loads(document[column])
        except ValueError as error:
            return _undecodable(row, f"{column}: {error}", received_at)
    return FeedEntry(seq, str(seq), row[2], document, partial(_raw, row), received_at)


def _decode_marked(row: tuple[Any, ...]) -> FeedEntry:
    """``_decode``, for a row read with ``_utf8_or_marked``."""
    for column, value in zip(FEED_COLUMNS, row, strict=True):
        if isinstance(value, NotUtf8):
            return _decode(row, f"{column}: not valid UTF-8 text")
    return _decode(row)


def _undecodable(row: tuple[Any, ...], problem: str, received_at: datetime) -> FeedEntry:
    seq = row[0]
    return FeedEntry(seq, str(seq), row[2], None, partial(_raw, row), received_at, problem)


def _too_large(connection: sqlite3.Connection, seq: int, size: int, limit: int) -> FeedEntry:
    """An event over the size cap, never read whole: its id and receive time if
    they are short, and its raw document streamed when a dead letter asks."""
    row = connection.execute(
        "SELECT iif(length(CAST(id AS BLOB)) <= ?1, CAST(id AS BLOB), NULL), "
        "iif(length(CAST(received_at AS BLOB)) <= ?1, CAST(received_at AS BLOB), NULL) "
        "FROM events WHERE seq = ?2",
        (4 * MAX_ID_LENGTH, seq),
    ).fetchone()
    event_id, received = (None if value is None else value.decode(errors="replace") for value in row)
    problem = f"document: is {size} bytes as stored, over the limit of {limit} (FC_STREAM_MAX_EVENT_BYTES)"
    received_at = _received_at(received) or datetime.now(UTC)
    return FeedEntry(
        seq, str(seq), event_id, None, partial(_streamed_raw, connection, seq), received_at, problem
    )


def _streamed_raw(connection: sqlite3.Connection, seq: int) -> Iterator[str]:
    """The text ``_raw`` makes of a row, in pieces: text and blobs are read a
    chunk at a time (SQLite's blob I/O), so that no piece is large. Text that
    is not UTF-8 shows replacement characters."""
    kinds = connection.execute(
        f"SELECT {', '.join(f'typeof({c})' for c in FEED_COLUMNS)} FROM events WHERE seq = ?", (seq,)
    ).fetchone()
    if kinds is None:
        raise LookupError(f"event {seq} was deleted before its dead letter was written")
    yield "{"
    for n, (column, kind) in enumerate(zip(FEED_COLUMNS, kinds, strict=True)):
        yield f"{', ' if n else ''}{json.dumps(column)}: "
        pieces: Iterable[str]
        if kind == "text":
            pieces = codecs.iterdecode(_chunks(connection, column, seq), "utf-8", "replace")
            quotes = '"', '"'
        elif kind == "blob":  # as _raw shows bytes
            pieces = map(_escaped, _chunks(connection, column, seq))
            quotes = "\"b'", "'\""
        else:
            (value,) = connection.execute(f"SELECT {column} FROM events WHERE seq = ?", (seq,)).fetchone()
            yield json.dumps(value)
            continue
        yield quotes[0]
        for piece in pieces:
            yield json.dumps(piece, ensure_ascii=False)[1:-1]
        yield quotes[1]
    yield "}"


def _chunks(connection: sqlite3.Connection, column: str, seq: int) -> Iterator[bytes]:
    with connection.blobopen("events", column, seq, readonly=True) as blob:
        while chunk := blob.read(RAW_CHUNK):
            yield chunk


def read_entries(connection: sqlite3.Connection, query: str, parameters: tuple[Any, ...]) -> list[FeedEntry]:
    """The rows of ``query`` (columns ``FEED_COLUMNS``) as feed entries."""
    try:
        return [_decode(row) for row in _select(connection, query, parameters)]
    except sqlite3.OperationalError:
        pass
    # One text that is not UTF-8 fails the whole read. Read again with each such
    # text marked, so that its event is dead-lettered instead of stopping the
    # feed; a store that is down fails this read too.
    connection.text_factory = _utf8_or_marked
    try:
        return [_decode_marked(row) for row in _select(connection, query, parameters)]
    except sqlite3.OperationalError as error:
        raise StoreUnavailable(f"sqlite: {error}") from error
    finally:
        connection.text_factory = str


def _select(connection: sqlite3.Connection, query: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    cursor = connection.cursor()
    cursor.row_factory = None  # tuples, for _decode
    return cursor.execute(query, parameters).fetchall()


class SqliteFeed:
    """Reads ``events`` by ``seq``; when there is nothing new it waits, checking
    ``PRAGMA data_version`` (which changes only when another connection wrote).
    A read that finds nothing calls ``idle``: the store counts what waits then.

    A batch is bounded by bytes as well as by events: the sizes of the next
    events are read first (SQL, no event leaves the database for it), then as
    many events as fit. An event over ``max_event_bytes`` is never read: it
    comes alone, undecodable, and its dead letter streams what it keeps."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        after: int,
        wakeup: threading.Event,
        idle: Callable[[], None] = lambda: None,
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self._connection = connection
        self._after = after
        self._wakeup = wakeup
        self._idle = idle  # called when a read finds nothing new
        self._max_event_bytes = max_event_bytes
        self.caught_up = True  # the last read took every event there was

    def next_batch(self, max_events: int, max_wait: float, max_bytes: int = BATCH_BYTES) -> Batch:
        deadline = time.monotonic() + max_wait
        version = None
        while True:
            entries, more = self._read(max_events, max_bytes)
            if entries:
                break
            self._idle()
            if time.monotonic() >= deadline:
                break
            while time.monotonic() < deadline:
                self._wakeup.wait(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))
                self._wakeup.clear()
                seen = self._data_version()
                if seen != version:
                    version = seen
                    break
        if entries:
            self._after = entries[-1].order
        self.caught_up = not more
        return Batch(entries, str(self._after), more)

    def _read(self, max_events: int, max_bytes: int) -> tuple[list[FeedEntry], bool]:
        """The next events that fit, and whether more wait. The sizes are read
        row by row, and no further than the budget: SQLite 3.40 reads a text
        to measure it (in its own memory, a row at a time; this process never
        holds an event over the cap)."""
        cursor = self._connection.cursor()
        cursor.row_factory = None
        taken, total, last, more = 0, 0, self._after, False
        try:
            for seq, size in cursor.execute(READ_SIZES, (self._after, max_events)):
                if size > self._max_event_bytes or (taken and total + size > max_bytes):
                    more = True
                    break
                taken, total, last = taken + 1, total + size, seq
            else:
                more = taken == max_events
            if taken:
                return read_entries(self._connection, READ_RANGE, (self._after, last)), more
            if more:  # the next event alone is over the cap
                entry = _too_large(self._connection, seq, size, self._max_event_bytes)
                return [entry], max_events == 1 or cursor.fetchone() is not None
        except sqlite3.OperationalError as error:
            raise StoreUnavailable(f"sqlite: {error}") from error
        finally:
            cursor.close()
        return [], False

    def _data_version(self) -> int:
        return int(self._connection.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        pass


class SqliteStore:
    """The processor's side of the embedded store."""

    def __init__(
        self,
        path: str | Path,
        resume_key: str = RESUME_KEY,
        *,
        from_beginning: bool = False,
        fold_events: int = FOLD_EVENTS,
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        """``from_beginning``: a first start takes every event already stored, not
        only those that come after (what ``fc-dev`` wants of a development database).
        ``fold_events``: while the feed is behind, the projections are written once
        this many events wait to be counted, rather than with every batch.
        ``max_event_bytes``: larger events are dead-lettered without being read."""
        self.path = Path(path)
        self._from_beginning = from_beginning
        self._connection = connect(path)
        self._resume_key = resume_key
        self._subscriptions_seen = -1  # last subscription_changes.seq handed out; -1: none yet
        self._feed_start = 0
        self._epoch: int | None = None
        self._holder: str | None = None
        self.wakeup = threading.Event()  # set by in-process writers to cut the idle wait short
        self._feed: SqliteFeed | None = None
        self._fold_events = fold_events
        self._max_event_bytes = max_event_bytes
        # Committed, not yet counted in the projections: see _count_when_due. The
        # events' keys only: their payloads would make memory follow their size.
        self._uncounted_events: list[EventKey] = []
        self._uncounted_jobs: list[DispatchJob] = []
        self._uncounted_through: int | None = None  # the last event of the last batch they come from

    def resume_token(self) -> ResumeToken | None:
        try:
            row = self._connection.execute(
                "SELECT token FROM resume_tokens WHERE key = ?", (self._resume_key,)
            ).fetchone()
        except sqlite3.OperationalError as error:
            raise StoreUnavailable(f"sqlite: {error}") from error
        return None if row is None else str(row["token"])

    def open_feed(self, resume_after: ResumeToken | None) -> SqliteFeed:
        if resume_after is None:
            # A first start begins at the current point, as the spec says, and
            # records it at once: a crash before the first batch must not move it.
            with transaction(self._connection):
                row = self._connection.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
                resume_after = "0" if self._from_beginning else str(row[0])
                self._save_token(resume_after)
        self._feed_start = int(resume_after)
        self._subscriptions_seen = -1  # a new feed starts from the subscriptions of its start
        self._count_uncounted(int(resume_after))
        self._feed = SqliteFeed(
            self._connection, self._feed_start, self.wakeup, self._count_while_idle, self._max_event_bytes
        )
        return self._feed

    def _save_token(self, token: ResumeToken) -> None:
        """Within the batch's transaction: refused, and so the whole batch, once a
        leader with a larger epoch, or another holder of the same one, saved its own."""
        saved = self._connection.execute(
            "INSERT INTO resume_tokens (key, token, epoch, holder, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET token = excluded.token, epoch = excluded.epoch, "
            "holder = excluded.holder, updated_at = excluded.updated_at "
            "WHERE resume_tokens.epoch IS NULL OR resume_tokens.epoch < coalesce(excluded.epoch, -1) "
            "OR (resume_tokens.epoch = excluded.epoch AND resume_tokens.holder IS excluded.holder)",
            (self._resume_key, token, self._epoch, self._holder, timestamp(datetime.now(UTC))),
        )
        if saved.rowcount != 1:
            row = self._connection.execute(
                "SELECT epoch, holder FROM resume_tokens WHERE key = ?", (self._resume_key,)
            ).fetchone()
            raise Fenced(
                f"resume token {self._resume_key!r} was saved under epoch {row['epoch']} "
                f"by {row['holder'] or 'an earlier version'}; "
                f"this instance writes under {self._epoch}",
                row["epoch"],
            )

    def fence(self, epoch: int, holder: str) -> None:
        self._epoch, self._holder = epoch, holder
        with transaction(self._connection):
            self._claim_token()

    def _claim_token(self) -> None:
        """Within a transaction: save the stored token again, under this instance's
        epoch; refused, and so the transaction, once a newer leader saved one."""
        token = self.resume_token()
        if token is not None:
            self._save_token(token)

    def subscription_changes(self) -> list[SubscriptionChange]:
        with transaction(self._connection, immediate=False):
            if self._subscriptions_seen < 0:
                changes = self._subscriptions_at(self._feed_start)
            else:
                changes = self._changes(
                    "SELECT * FROM subscription_changes WHERE seq > ? ORDER BY seq", self._subscriptions_seen
                )
            last = self._connection.execute("SELECT coalesce(max(seq), 0) FROM subscription_changes")
            self._subscriptions_seen = int(last.fetchone()[0])
        return changes

    def _subscriptions_at(self, events_seq: int) -> list[SubscriptionChange]:
        """Each subscription as the events after ``events_seq`` see it, then the
        changes that come later."""
        current = self._changes(
            "SELECT * FROM subscription_changes WHERE seq IN (SELECT max(seq) FROM subscription_changes "
            "WHERE events_seq <= ? GROUP BY subscription_id) ORDER BY seq",
            events_seq,
        )
        later = self._changes(
            "SELECT * FROM subscription_changes WHERE events_seq > ? ORDER BY seq", events_seq
        )
        return [SubscriptionChange(c.subscription_id, c.document, -1) for c in current] + later

    def _changes(self, query: str, parameter: int) -> list[SubscriptionChange]:
        return [
            SubscriptionChange(
                row["subscription_id"],
                None if row["document"] is None else decode_subscription_row(json.loads(row["document"])),
                row["events_seq"],
            )
            for row in self._connection.execute(query, (parameter,))
        ]

    def commit(self, batch: ProcessedBatch) -> CommitReport:
        events, jobs, token = self._uncounted_events, self._uncounted_jobs, batch.resume_token
        before = len(events), len(jobs)
        counted = False
        try:
            with transaction(self._connection):
                new_jobs = self._insert_jobs(batch.jobs)
                self._insert_dead_letters(batch.dead_letters)
                self._insert_filter_failures(batch.filter_failures)
                events.extend(map(event_key, batch.events))
                jobs.extend(new_jobs)
                if token is not None:  # a batch without one comes again, and is counted with one
                    self._mark("committed_seq = ?2", int(token))
                    counted = self._count_when_due(int(token))
                    self._save_token(token)
        except BaseException:
            del events[before[0] :], jobs[before[1] :]  # the batch will come again
            raise
        if counted:
            self._counted()
        elif token is not None:
            self._uncounted_through = int(token)
        return CommitReport(jobs_created=len(new_jobs), duplicates=len(batch.jobs) - len(new_jobs))

    def _count_when_due(self, through: int) -> bool:
        """Within the batch's transaction: write the projections of the batches
        committed since they were last written, once the feed has caught up or
        ``fold_events`` events wait. Writing them every batch cost the loop more
        than a tenth of its time, for keys that mostly recur from one batch to the
        next. A crash loses nothing: the next start counts what was left."""
        caught_up = self._feed is None or self._feed.caught_up
        if not caught_up and len(self._uncounted_events) < self._fold_events:
            return False
        self._count(through)
        return True

    def _count_while_idle(self) -> None:
        """The feed found nothing new: count what waits, so that idle projections
        are current. A store that is busy now is tried again at the next read."""
        if self._uncounted_through is None:
            return
        with suppress(StoreUnavailable):
            with transaction(self._connection):
                self._count(self._uncounted_through)
                self._claim_token()  # refused, and the count with it, once a newer leader saved one
            self._counted()

    def _count_uncounted(self, start: int) -> None:
        """Count what the last run committed but did not count before it stopped:
        the events between the marks that were not dead-lettered, read and
        validated as the loop read them, and the jobs stored since. Then mark
        all before ``start`` as counted: the feed starts there, and an operator
        who moved the token forward skipped the events between."""
        self._counted()
        connection = self._connection
        marks = connection.execute(
            "SELECT committed_seq, counted_seq, jobs_seq FROM projection_marks WHERE key = ?",
            (self._resume_key,),
        ).fetchone()
        try:
            if marks is not None:  # else a first start, or a store from before the marks
                committed, counted, jobs_seq = marks
                while entries := read_entries(connection, READ_UNCOUNTED, (counted, committed)):
                    counted = entries[-1].order
                    for entry in entries:
                        with suppress(InvalidEvent):  # it was dead-lettered then, and is not counted
                            self._uncounted_events.append(event_key(entry.event()))
                self._uncounted_jobs.extend(map(_job, _select(connection, READ_UNCOUNTED_JOBS, (jobs_seq,))))
            with transaction(connection):
                connection.execute(
                    "INSERT OR IGNORE INTO projection_marks (key, committed_seq, counted_seq, jobs_seq) "
                    "VALUES (?, 0, 0, 0)",
                    (self._resume_key,),
                )
                self._mark("committed_seq = ?2", start)
                self._count(start)
                self._claim_token()  # refused, and the count with it, once a newer leader saved one
        finally:
            self._counted()

    def _count(self, through: int) -> None:
        """Within a transaction: write what waits to the projections, and mark it
        counted: the events up to ``through``, every job stored."""
        self._apply(ProjectionDelta.of(self._uncounted_events, self._uncounted_jobs))
        self._mark(f"counted_seq = ?2, jobs_seq = ({LAST_JOB})", through)

    def _mark(self, assignments: str, seq: int) -> None:
        self._connection.execute(
            f"UPDATE projection_marks SET {assignments} WHERE key = ?1", (self._resume_key, seq)
        )

    def _counted(self) -> None:
        self._uncounted_events.clear()
        self._uncounted_jobs.clear()
        self._uncounted_through = None

    def _insert_jobs(self, jobs: Sequence[DispatchJob]) -> Sequence[DispatchJob]:
        """Insert and return the jobs that were new. The batch insert skips the jobs
        that are there already; when it skipped some, the rows it added (those past
        the largest ``seq`` before it: SQLite gives a new row the largest plus one,
        as long as that is below 2**63, which no row of this store comes near)
        say which were new. No savepoint: one would make SQLite keep a copy of every
        page the insert changes, in case of a rollback."""
        if not jobs:
            return jobs
        connection = self._connection
        (last,) = connection.execute("SELECT coalesce(max(seq), 0) FROM dispatch_jobs").fetchone()
        if connection.executemany(INSERT_JOB, map(_job_row, jobs)).rowcount == len(jobs):
            return jobs
        rows = connection.execute(
            "SELECT event_id, subscription_id FROM dispatch_jobs WHERE seq > ?", (last,)
        )
        added = {(row[0], row[1]) for row in rows}
        new_jobs = []
        for job in jobs:  # of equal jobs in one batch, the first was written
            pair = (job.event_id, job.subscription_id)
            if pair in added:
                added.discard(pair)
                new_jobs.append(job)
        return new_jobs

    def _insert_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        self._connection.executemany(
            "INSERT OR IGNORE INTO dead_letters (position, event_id, reason, raw, received_at, raw_bytes, "
            "raw_sha256) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    letter.position,
                    letter.event_id,
                    letter.reason,
                    letter.raw,
                    timestamp(letter.received_at),
                    letter.raw_bytes,
                    letter.raw_sha256,
                )
                for letter in letters
            ],
        )

    def _insert_filter_failures(self, failures: Sequence[FilterFailure]) -> None:
        self._connection.executemany(
            "INSERT OR IGNORE INTO filter_failures (event_id, subscription_id, client_id, reason, failed_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [
                (f.event_id, f.subscription_id, f.client_id, f.reason, timestamp(f.failed_at))
                for f in failures
            ],
        )

    def _apply(self, delta: ProjectionDelta) -> None:
        connection = self._connection
        connection.executemany(
            "INSERT INTO event_type_counts (type, count) VALUES (?, ?) "
            "ON CONFLICT (type) DO UPDATE SET count = count + excluded.count",
            delta.event_types.items(),
        )
        connection.executemany(
            "INSERT INTO subscription_stats (subscription_id, jobs_created, last_matched_at) "
            "VALUES (?, ?, ?) ON CONFLICT (subscription_id) DO UPDATE SET "
            "jobs_created = jobs_created + excluded.jobs_created, "
            "last_matched_at = max(coalesce(last_matched_at, ''), excluded.last_matched_at)",
            [(key, jobs, timestamp(last)) for key, jobs, last in delta.subscription_rows()],
        )
        connection.executemany(
            "INSERT INTO client_activity (client_id, events, jobs, last_event_time) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (client_id) DO UPDATE SET events = events + excluded.events, "
            "jobs = jobs + excluded.jobs, "
            "last_event_time = max(coalesce(last_event_time, ''), "
            "coalesce(excluded.last_event_time, ''))",
            [(key, events, jobs, _sql_value(last)) for key, events, jobs, last in delta.client_rows()],
        )

    def close(self) -> None:
        self._connection.close()


# Without the payloads, which the projections do not count (and events whose
# payload was invalid were dead-lettered): read in pages, memory stays small.
READ_UNCOUNTED = (
    f"SELECT {', '.join('NULL' if c in JSON_COLUMNS else c for c in FEED_COLUMNS)} "
    "FROM events WHERE seq > ? AND seq <= ? "
    "AND NOT EXISTS (SELECT 1 FROM dead_letters WHERE position = CAST(events.seq AS TEXT)) "
    "ORDER BY seq LIMIT 500"
)
READ_UNCOUNTED_JOBS = f"SELECT {', '.join(JOB_COLUMNS)} FROM dispatch_jobs WHERE seq > ? ORDER BY seq"
LAST_JOB = "SELECT coalesce(max(seq), 0) FROM dispatch_jobs"


def _job(row: tuple[Any, ...]) -> DispatchJob:
    """A row of ``dispatch_jobs`` as the job it was written from (``_job_row`` undone)."""
    values = list(row)
    for n in _TIME_COLUMNS:
        if values[n] is not None:
            values[n] = parse_timestamp(values[n])
    return DispatchJob(*values)


def _job_row(job: DispatchJob) -> tuple[Any, ...]:
    """The job as a row of ``INSERT_JOB``: its fields in order, times as text.
    Spelled out: two jobs per event pass through here, and a generic
    conversion took twice as long."""
    return (
        job.id,
        job.event_id,
        job.subscription_id,
        job.client_id,
        job.status,
        job.target,
        job.pool_code,
        timestamp(job.scheduled_at),
        job.attempts,
        _sql_value(job.last_attempt_at),
        job.last_error,
        timestamp(job.created_at),
    )


def _sql_value(value: object) -> object:
    """Times as text in the one format that also sorts; the rest as it is."""
    return timestamp(value) if isinstance(value, datetime) else value


def decode_subscription_row(document: dict[str, Any]) -> dict[str, Any]:
    """A stored or logged row as the subscription contract expects it; what cannot
    be converted is passed on as is, for validation to reject with a reason."""
    if document.get("active") in (0, 1):
        document["active"] = bool(document["active"])
    if isinstance(document.get("filters"), str):
        with suppress(ValueError):
            document["filters"] = json.loads(document["filters"])
    if document.get("filters") is None:
        document.pop("filters", None)
    return document
