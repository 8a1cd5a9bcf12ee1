"""The embedded store's tables, and the connections and transactions over them."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from processor.stores.base import (
    StoreUnavailable,
)
from processor.stores.sqlite.rows import JOB_COLUMNS

BUSY_TIMEOUT_MS = 1000
MIGRATION_BUSY_MS = 120_000  # how long an opener waits for another to move an old file's jobs

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

DISPATCH_JOBS

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

-- Events and jobs that an operator's repair counted in the projections itself
-- (a dead letter re-driven, a job backfilled): a start's recount passes over
-- them, and a count that moves the marks past them deletes them.
CREATE TABLE IF NOT EXISTS counted_apart (
    kind TEXT NOT NULL,     -- 'event' (by events.seq) or 'job' (by dispatch_jobs.seq)
    seq  INTEGER NOT NULL,
    PRIMARY KEY (kind, seq)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS resume_tokens (
    key        TEXT PRIMARY KEY,
    token      TEXT NOT NULL,
    epoch      INTEGER,  -- the leader's fencing epoch; NULL without leader election
    updated_at TEXT NOT NULL,
    holder     TEXT      -- the lock holder that wrote it under that epoch
);
"""

# Every key a job adds grows in the feed's order, so that a batch's jobs land
# in the same few index pages: the pair is unique by the event's seq (not by its
# id, random hex, which put every event in a page of its own, and the WAL's
# checkpoints behind every commit), the rows are in the order they were written,
# and the other two indexes end where new jobs go (pending, scheduled now; a
# client's latest). A job whose event has no seq here (a caller that gave none)
# is unique by its ids, in a partial index that holds those alone.
JOBS_TABLE = """
CREATE TABLE IF NOT EXISTS {table} (
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
{columns}    UNIQUE ({unique}, subscription_id)
);
"""
SEQ_COLUMN = "    event_seq       INTEGER,\n"
JOBS_INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS dispatch_jobs_unplaced ON dispatch_jobs (event_id, subscription_id)
    WHERE event_seq IS NULL;
CREATE INDEX IF NOT EXISTS dispatch_jobs_status_scheduled ON dispatch_jobs (status, scheduled_at);
CREATE INDEX IF NOT EXISTS dispatch_jobs_client ON dispatch_jobs (client_id);
"""
# The table as files made before 2026-12 have it, unique by (event_id,
# subscription_id): ``connect`` moves such a file's jobs to the table above.
LEGACY_JOBS_TABLE = (
    JOBS_TABLE.format(table="dispatch_jobs", columns="", unique="event_id")
    + """
CREATE INDEX dispatch_jobs_status_scheduled ON dispatch_jobs (status, scheduled_at);
CREATE INDEX dispatch_jobs_client ON dispatch_jobs (client_id);
"""
)
JOB_TABLE_COLUMNS = frozenset({"seq", *JOB_COLUMNS, "event_seq"})
JOB_INDEX_NAMES = ("dispatch_jobs_unplaced", "dispatch_jobs_status_scheduled", "dispatch_jobs_client")
SCHEMA = SCHEMA.replace(
    "DISPATCH_JOBS", JOBS_TABLE.format(table="dispatch_jobs", columns=SEQ_COLUMN, unique="event_seq")
)

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


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, schema in place."""
    connection = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    try:
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("PRAGMA foreign_keys = ON")
        connection.executescript(SCHEMA)
        with suppress(StoreUnavailable):  # busy or read-only: a leftover index costs speed only
            _drop_indexes(connection, DROPPED_INDEXES)
        _add_columns(connection, "dead_letters", {"raw_bytes": "INTEGER", "raw_sha256": "TEXT"})
        _add_columns(connection, "resume_tokens", {"holder": "TEXT"})
        _key_jobs_by_event_seq(connection)
        connection.executescript(JOBS_INDEXES)
    except BaseException:
        connection.close()
        raise
    return connection


# The events indexes MongoDB's events collection carries for the platform's
# readers. Nothing reads the embedded store's events by them, and every insert
# paid for them: each batch of events touched a page of each per type and per
# client, which held fc-dev's ingest to a sixth of what the table alone takes.
DROPPED_INDEXES = ("events_type", "events_client_time")


def _drop_indexes(connection: sqlite3.Connection, names: Sequence[str]) -> None:
    """Indexes a store file was made with and no longer needs, dropped from it in place."""
    marks = ", ".join("?" * len(names))
    query = f"SELECT name FROM sqlite_master WHERE type = 'index' AND name IN ({marks})"
    if connection.execute(query, names).fetchall():
        with transaction(connection):
            for name in names:
                connection.execute(f"DROP INDEX IF EXISTS {name}")


def _columns(connection: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]


def _key_jobs_by_event_seq(connection: sqlite3.Connection) -> None:
    """A file made before jobs were keyed by their event's seq: its jobs moved to
    the table of today in one transaction with its indexes, in their order, each
    with its event's seq (none when its event is no longer stored); columns,
    indexes and triggers an operator added to the old table come along, and
    views on it keep working. A failure rolls it all back. Another process
    opening the file meanwhile waits for it (``MIGRATION_BUSY_MS``)."""
    if "event_seq" in _columns(connection, "dispatch_jobs"):
        return
    connection.execute(f"PRAGMA busy_timeout = {MIGRATION_BUSY_MS}")
    try:
        with transaction(connection):
            if "event_seq" in _columns(connection, "dispatch_jobs"):
                return  # another connection moved them meanwhile
            _move_jobs(connection)
    finally:
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def _move_jobs(connection: sqlite3.Connection) -> None:
    info = list(connection.execute("PRAGMA table_info(dispatch_jobs)"))
    columns = [row[1] for row in info]
    extra = "".join(f"    {row[1]} {row[2]},\n" for row in info if row[1] not in JOB_TABLE_COLUMNS)
    added = connection.execute(
        "SELECT sql FROM sqlite_master WHERE tbl_name = 'dispatch_jobs' AND type IN ('index', 'trigger') "
        f"AND sql IS NOT NULL AND name NOT IN ({', '.join('?' * len(JOB_INDEX_NAMES))})",
        JOB_INDEX_NAMES,
    ).fetchall()
    connection.execute("DROP TABLE IF EXISTS dispatch_jobs_keyed")
    connection.execute(
        JOBS_TABLE.format(table="dispatch_jobs_keyed", columns=SEQ_COLUMN + extra, unique="event_seq")
    )
    connection.execute(
        f"INSERT INTO dispatch_jobs_keyed ({', '.join(columns)}, event_seq) "
        f"SELECT {', '.join(f'j.{name}' for name in columns)}, "
        "(SELECT e.seq FROM events e WHERE e.id = j.event_id) FROM dispatch_jobs j ORDER BY j.seq"
    )
    connection.execute("DROP TABLE dispatch_jobs")
    # Legacy renaming: views naming dispatch_jobs are left as they are (they name it again after).
    connection.execute("PRAGMA legacy_alter_table = ON")
    try:
        connection.execute("ALTER TABLE dispatch_jobs_keyed RENAME TO dispatch_jobs")
    finally:
        connection.execute("PRAGMA legacy_alter_table = OFF")
    for statement in [*JOBS_INDEXES.split(";"), *(sql for (sql,) in added)]:
        if statement.strip():
            connection.execute(statement)


def _add_columns(connection: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """Columns added since a store file was made, added to it in place."""

    def missing() -> list[str]:
        present = _columns(connection, table)
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
