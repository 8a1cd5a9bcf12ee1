"""The loop benchmarks' workload: subscriptions, events and the embedded store's files.

1,000 subscriptions over 50 clients, 20 each, in ten families per client; a
family is a broad pattern and a narrower one (``d7:orders:*:*`` and
``d7:orders:shipment:*``), and every event is of one of its client's families
with a ``shipment`` resource, so it matches exactly two subscriptions. Payloads
are small (three fields), and event types repeat (25 domains, 8 actions), as
real traffic does.

Everything is written with plain SQL into tables made by ``connect()``, as the
services that publish events would. Run as a module, it times the loop over a
prepared file in a process of its own (``benchmarks/test_loop.py`` uses this for
the pure-Python matcher, which is chosen at import)::

    FASTMATCH_PURE_PYTHON=1 python -m benchmarks.workload TEMPLATE WORKDIR BATCH ROUNDS [gc]
"""

from __future__ import annotations

import gc
import json
import random
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastmatch
from benchmarks.figures import InTurn
from fastmatch import PatternIndex
from processor.jobs import job_id
from processor.loop import Processor, Settings
from processor.models import PENDING
from processor.stores.sqlite import (
    FEED_COLUMNS,
    LEGACY_JOBS_TABLE,
    RESUME_KEY,
    SqliteFeed,
    SqliteStore,
    connect,
    timestamp,
    transaction,
)

CLIENTS = 50
FAMILIES = 10  # per client; two subscriptions each
DOMAINS = 25
ACTIONS = ("created", "packed", "shipped", "delayed", "returned", "lost", "found", "delivered")
MATCHES_PER_EVENT = 2
POOL = "default"
SEED = 4242
START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Subscription:
    id: str
    client_id: str
    pattern: str
    target: str


def client_id(client: int) -> str:
    return f"client-{client:02d}"


def domain(client: int, family: int) -> str:
    return f"d{(client * 3 + family) % DOMAINS}"


def subscriptions() -> list[Subscription]:
    found = []
    for client in range(CLIENTS):
        for family in range(FAMILIES):
            for narrow, pattern in enumerate(
                (f"{domain(client, family)}:orders:*:*", f"{domain(client, family)}:orders:shipment:*")
            ):
                number = family * 2 + narrow
                found.append(
                    Subscription(
                        id=f"sub-{client:02d}-{number:02d}",
                        client_id=client_id(client),
                        pattern=pattern,
                        target=f"https://hooks.example.com/{client_id(client)}/{number}",
                    )
                )
    return found


def event_type(client: int, family: int, action: int) -> str:
    return f"{domain(client, family)}:orders:shipment:{ACTIONS[action % len(ACTIONS)]}"


def event_rows(count: int, first: int = 0, seed: int = SEED) -> Iterator[tuple[Any, ...]]:
    """``(type, client_id, source, time, data, subject)`` of ``count`` events."""
    rng = random.Random(seed + first)
    for number in range(first, first + count):
        client = rng.randrange(CLIENTS)
        moment = START + timedelta(milliseconds=number)
        yield (
            event_type(client, rng.randrange(FAMILIES), rng.randrange(len(ACTIONS))),
            client_id(client),
            "bench",
            moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            json.dumps({"order": number, "total": 12.5, "currency": "EUR"}),
            f"order-{number}",
        )


INSERT_EVENT = "INSERT INTO events (type, client_id, source, time, data, subject) VALUES (?, ?, ?, ?, ?, ?)"


def add_subscriptions(connection: sqlite3.Connection) -> None:
    with transaction(connection):
        connection.executemany(
            "INSERT INTO subscriptions (id, client_id, name, event_type_pattern, target, pool_code) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(s.id, s.client_id, f"bench {s.id}", s.pattern, s.target, POOL) for s in subscriptions()],
        )


def add_events(connection: sqlite3.Connection, count: int, chunk: int = 100_000) -> None:
    for first in range(0, count, chunk):
        with transaction(connection):
            connection.executemany(INSERT_EVENT, event_rows(min(chunk, count - first), first))


def set_resume_token(connection: sqlite3.Connection, token: str = "0") -> None:
    """Make the processor start after ``token`` rather than at the current point."""
    connection.execute(
        "INSERT INTO resume_tokens (key, token, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET token = excluded.token",
        (RESUME_KEY, token, timestamp(datetime.now(UTC))),
    )


def build(path: Path, events: int) -> None:
    """A closed store file, WAL folded in: subscriptions, then ``events`` waiting
    events, and a resume token before the first of them."""
    connection = connect(path)
    add_subscriptions(connection)
    add_events(connection, events)
    set_resume_token(connection)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()


def fresh_copy(template: Path, path: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(template, path)
    return path


def job_rows(template: Path, batch_size: int) -> list[list[tuple[Any, ...]]]:
    """The rows the processor writes to ``dispatch_jobs`` for the template's events,
    one list per feed batch, worked out here so the store's limit pays no matching."""
    indexes: dict[str, PatternIndex[Subscription]] = {}
    for subscription in subscriptions():
        indexes.setdefault(subscription.client_id, PatternIndex()).add(subscription.pattern, subscription)
    now = timestamp(datetime.now(UTC))
    connection = sqlite3.connect(template)
    batches: list[list[tuple[Any, ...]]] = []
    rows = connection.execute("SELECT seq, id, client_id, type FROM events ORDER BY seq").fetchall()
    connection.close()
    for start in range(0, len(rows), batch_size):
        batch = []
        for seq, event_id, client, type_ in rows[start : start + batch_size]:
            for s in indexes[client].match(type_):
                key = job_id(event_id, s.id)
                # Columns of INSERT_JOB_ROW; the processor's rows, to the character.
                batch.append(
                    (key, event_id, s.id, client, PENDING, s.target, POOL, now, 0, None, None, now, seq)
                )
        batches.append(batch)
    return batches


def legacy_copy(template: Path, path: Path) -> Path:
    """A fresh copy of ``template`` whose jobs table is as files made before
    2026-12 have it (unique by ``event_id``), to measure the old schema's limit;
    opened only with plain ``sqlite3``, which leaves it as it is."""
    fresh_copy(template, path)
    connection = sqlite3.connect(path)
    connection.execute("DROP TABLE dispatch_jobs")
    connection.executescript(LEGACY_JOBS_TABLE)
    connection.close()
    return path


def legacy_rows(batches: list[list[tuple[Any, ...]]]) -> list[list[tuple[Any, ...]]]:
    """``job_rows``'s rows as ``LEGACY_INSERT_JOB_ROW`` takes them: without the event's seq."""
    return [[row[:-1] for row in batch] for batch in batches]


# The one read the store needs for a batch (the loop also reads the events' sizes first).
READ_FEED = f"SELECT {', '.join(FEED_COLUMNS)} FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
INSERT_JOB_ROW = (
    "INSERT OR IGNORE INTO dispatch_jobs (id, event_id, subscription_id, client_id, status, target, "
    "pool_code, scheduled_at, attempts, last_attempt_at, last_error, created_at, event_seq) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
LEGACY_INSERT_JOB_ROW = (
    "INSERT OR IGNORE INTO dispatch_jobs (id, event_id, subscription_id, client_id, status, target, "
    "pool_code, scheduled_at, attempts, last_attempt_at, last_error, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class LimitRound:
    """The store's own limit: plain ``sqlite3`` reads the events a batch at a time
    and writes the precomputed job rows, one transaction per batch."""

    def __init__(
        self, path: Path, batches: list[list[tuple[Any, ...]]], batch_size: int, *, legacy: bool = False
    ) -> None:
        """``legacy``: a file of ``legacy_copy`` and rows of ``legacy_rows``."""
        self.connection = _plain(path) if legacy else connect(path)
        self.insert = LEGACY_INSERT_JOB_ROW if legacy else INSERT_JOB_ROW
        self.batches = batches
        self.batch_size = batch_size
        self.after = 0
        self.events = 0
        self.step(batches[0])  # the first batch, like the loop's, is outside the timed part
        self.events = 0

    def step(self, jobs: list[tuple[Any, ...]]) -> None:
        connection = self.connection
        cursor = connection.cursor()
        cursor.row_factory = None  # tuples, as the processor's feed reads them
        events = cursor.execute(READ_FEED, (self.after, self.batch_size)).fetchall()
        self.after = events[-1][0]
        self.events += len(events)
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(self.insert, jobs)
        connection.execute("COMMIT")

    def run(self, laps: list[float] | None = None) -> None:
        """With ``laps``, the clock's time after each batch is appended to it."""
        for jobs in self.batches[1:]:
            self.step(jobs)
            if laps is not None:
                laps.append(time.perf_counter())

    def close(self) -> None:
        self.connection.close()


class LoopRound:
    """The processor on a fresh store file, fed by the store's own feed. The first
    batch (it loads the subscriptions) is processed here, outside the timed part.

    The loop retries a failing store for ever; past ``timeout`` seconds the
    round stops it, so that a broken store fails the benchmark instead of hanging it."""

    def __init__(self, path: Path, batch_size: int, timeout: float = 300.0) -> None:
        self.store = SqliteStore(path)
        self.processor = Processor(self.store, Settings(batch_size=batch_size, max_wait=0.0))
        self.watchdog = threading.Timer(timeout, self.processor.stop)
        self.watchdog.daemon = True
        self.watchdog.start()
        self.batch_size = batch_size
        self.feed: SqliteFeed = self.store.open_feed(self.store.resume_token())
        self.processor.projector.recount()  # as the loop starts
        self.processor.process(self.feed.next_batch(batch_size, 0.0))
        self.events = 0

    def run(self, laps: list[float] | None = None) -> None:
        """With ``laps``, the clock's time after each batch is appended to it."""
        while True:
            batch = self.feed.next_batch(self.batch_size, 0.0)
            if not batch.entries:
                return
            self.processor.process(batch)
            self.events += len(batch.entries)
            if laps is not None:
                laps.append(time.perf_counter())

    def jobs(self) -> int:
        return self._count("SELECT count(*) FROM dispatch_jobs")

    def counted(self) -> int:
        """Events counted in the projections: all of them, once the round has ended."""
        return self._count("SELECT coalesce(sum(count), 0) FROM event_type_counts")

    def _count(self, query: str) -> int:
        connection = sqlite3.connect(self.store.path)
        count = int(connection.execute(query).fetchone()[0])
        connection.close()
        return count

    def close(self) -> None:
        self.watchdog.cancel()
        self.feed.close()
        self.store.close()


def _plain(path: Path) -> sqlite3.Connection:
    """A connection as ``connect`` makes it, without its schema (which would move a legacy file's jobs)."""
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    return connection


def limit_round(
    template: Path, workdir: Path, batches: list[list[tuple[Any, ...]]], batch_size: int, limit: InTurn
) -> None:
    """One round of the store's limit on a fresh copy of ``template``, timed into ``limit``."""
    round_ = LimitRound(fresh_copy(template, workdir / "limit.db"), batches, batch_size)
    gc.collect()
    gc.disable()
    limit.time(round_.run)
    gc.enable()
    round_.close()


def time_loop(
    template: Path, workdir: Path, batch_size: int, rounds: int, *, disable_gc: bool = True
) -> dict[str, Any]:
    """Each of ``rounds`` timed loop rounds, for a process of its own, each after a
    round of the store's limit; the garbage collector is off while the clock runs,
    as ``--benchmark-disable-gc`` has it."""
    seconds = []
    events = counted = 0
    batches = job_rows(template, batch_size)
    limit = InTurn(operations=0)  # only its best time goes back
    for number in range(rounds):
        limit_round(template, workdir, batches, batch_size, limit)
        loop = LoopRound(fresh_copy(template, workdir / f"loop-{number}.db"), batch_size)
        gc.collect()
        if disable_gc:
            gc.disable()
        started = time.perf_counter()
        loop.run()
        seconds.append(time.perf_counter() - started)
        gc.enable()
        events, counted = loop.events, loop.counted()
        loop.close()
    return {
        "implementation": fastmatch.IMPLEMENTATION,
        "events": events,
        "counted": counted,
        "seconds": seconds,
        "limit_seconds": limit.best,
    }


def main(argv: list[str]) -> int:
    """``TEMPLATE WORKDIR BATCH ROUNDS [gc]``: with ``gc``, the collector stays on."""
    template, workdir, batch_size, rounds = Path(argv[0]), Path(argv[1]), int(argv[2]), int(argv[3])
    disable_gc = argv[4:] != ["gc"]
    print(json.dumps(time_loop(template, workdir, batch_size, rounds, disable_gc=disable_gc)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
