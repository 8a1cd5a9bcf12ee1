"""The operator tools (``processor.remedies``) on the embedded store: backfill and
re-drive, in items per second, through ``SqliteRepairs`` on a store file.

Run: ``pytest benchmarks/test_remedies.py -p no:cacheprovider --benchmark-disable-gc``
(15 to 30 s on 2 cores). The figures are printed, nothing about them is asserted.

Workload: one client with 100 subscriptions, written through ``Catalog`` as the
API writes them; events of four domains and eight actions
(``d0:orders:shipment:packed``), payloads of three fields, written with plain SQL.
The backfilled subscription is ``d0:orders:*:*`` (a quarter of the events); the
99 others are ``d{i % 4}:orders:shipment:{action}``, about three to an event type.

- Backfill: ``backfill(repairs, subscription)`` over 20,000 stored events, from
  the start. "first run": on a fresh copy of the store file each round, it
  creates the jobs (about 5,000). "second run": on a file backfilled once before
  the clock starts, every job it builds exists already (all skipped): what a
  backfill run again, or resumed over work done, costs. Rate: events examined
  per second (every event is read, decoded and validated; a quarter match).
- Re-drive: 5,000 events without a ``client_id`` (plain SQL), processed by the
  real processor (``SqliteStore(from_beginning=True)`` and ``Processor``, driven
  a batch at a time until a read finds nothing) into 5,000 dead letters, then
  mended with one ``UPDATE``. Each round, on a fresh copy,
  ``redrive_dead_letters(repairs)`` reads each letter's event again, matches it
  against all 100 subscriptions, writes its jobs (about three) and removes the
  letter. Rate: letters per second.

Each round opens its ``SqliteRepairs`` before the clock starts (the schema's
``CREATE ... IF NOT EXISTS``); the subscriptions' load (``current_subscriptions``
and the ``Judge``) is inside the run, as an operator's command pays it.
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from benchmarks.figures import measure, record
from benchmarks.workload import ACTIONS, INSERT_EVENT, START, fresh_copy
from processor.loop import Processor, Settings
from processor.models import SubscriptionFields
from processor.remedies import Report, backfill, redrive_dead_letters
from processor.stores.sqlite import Catalog, SqliteRepairs, SqliteStore, connect, transaction

TABLE = "Operator tools on the embedded store (SQLite file), items per second"
CLIENT = "acme"
DOMAINS = 4
SUBSCRIPTIONS = 100
EVENTS = 20_000
LETTERS = 5_000
ROUNDS = 7
BATCH = 500  # the processor's batches while it letters the invalid events
BACKFILL = f"backfill, {EVENTS:,} events"
REDRIVE = f"re-drive, {LETTERS:,} letters"


def add_subscriptions(path: Path) -> str:
    """The client's 100 subscriptions, through the API's side of the store; the backfilled one's id."""
    catalog = Catalog(path)

    def fields(name: str, pattern: str, number: int) -> SubscriptionFields:
        return SubscriptionFields(
            client_id=CLIENT,
            name=name,
            event_type_pattern=pattern,
            target=f"https://hooks.example.com/{CLIENT}/{number}",
            pool_code="default",
        )

    backfilled = catalog.create_subscription(fields("late", "d0:orders:*:*", 0)).id
    for number in range(1, SUBSCRIPTIONS):
        action = ACTIONS[(number // DOMAINS) % len(ACTIONS)]
        catalog.create_subscription(
            fields(f"route {number}", f"d{number % DOMAINS}:orders:shipment:{action}", number)
        )
    catalog.close()
    return backfilled


def event_rows(count: int, client: str | None, seed: int) -> list[tuple[Any, ...]]:
    """``INSERT_EVENT``'s columns; ``client`` None makes each event invalid (no ``client_id``)."""
    rng = random.Random(seed)
    return [
        (
            f"d{rng.randrange(DOMAINS)}:orders:shipment:{rng.choice(ACTIONS)}",
            client,
            "bench",
            (START + timedelta(milliseconds=number)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            json.dumps({"order": number, "total": 12.5, "currency": "EUR"}),
            f"order-{number}",
        )
        for number in range(count)
    ]


def insert(path: Path, rows: list[tuple[Any, ...]]) -> None:
    connection = connect(path)
    with transaction(connection):
        connection.executemany(INSERT_EVENT, rows)
    connection.close()


def settle(path: Path) -> Path:
    """The WAL folded into the file, so that a copy of the file alone is the whole store."""
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    return path


def count(path: Path, query: str) -> int:
    connection = sqlite3.connect(path)
    found = int(connection.execute(query).fetchone()[0])
    connection.close()
    return found


@pytest.fixture(scope="module")
def stored_events(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A store file of ``EVENTS`` events and the subscriptions (no processor ran); the backfilled id."""
    path = tmp_path_factory.mktemp("backfill") / "template.db"
    backfilled = add_subscriptions(path)
    insert(path, event_rows(EVENTS, CLIENT, seed=1))
    return settle(path), backfilled


def process_until_idle(path: Path) -> None:
    """The real processor over every stored event, a batch at a time, until a read finds nothing."""
    store = SqliteStore(path, from_beginning=True)
    processor = Processor(store, Settings(batch_size=BATCH, max_wait=0.0))
    feed = store.open_feed(store.resume_token())
    processor.projector.recount()  # as the loop starts
    while True:
        batch = feed.next_batch(BATCH, 0.0)
        if not batch.entries:
            break
        processor.process(batch)
    processor.projector.flush()
    feed.close()
    store.close()


@pytest.fixture(scope="module")
def mended_letters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store file of ``LETTERS`` dead letters whose events were mended after."""
    path = tmp_path_factory.mktemp("redrive") / "template.db"
    add_subscriptions(path)
    insert(path, event_rows(LETTERS, None, seed=2))
    process_until_idle(path)
    assert count(path, "SELECT count(*) FROM dead_letters") == LETTERS
    assert count(path, "SELECT count(*) FROM dispatch_jobs") == 0
    connection = connect(path)
    connection.execute("UPDATE events SET client_id = ? WHERE client_id IS NULL", (CLIENT,))
    connection.close()
    return settle(path)


class Runs:
    """Rounds of one tool, each on a ``SqliteRepairs`` opened before the clock starts."""

    def __init__(self, tool: Callable[[SqliteRepairs], Report]) -> None:
        self.tool = tool
        self.opened: list[SqliteRepairs] = []
        self.reports: list[Report] = []

    def open(self, path: Path, template: Path | None = None) -> tuple[tuple[SqliteRepairs], dict[str, Any]]:
        """``path``'s repairs, on a fresh copy of ``template`` if given (the last round's closed first)."""
        self.close()
        if template is not None:
            fresh_copy(template, path)
        self.opened.append(SqliteRepairs(path))
        return (self.opened[-1],), {}

    def run(self, repairs: SqliteRepairs) -> None:
        self.reports.append(self.tool(repairs))

    def close(self) -> None:
        for repairs in self.opened:
            repairs.close()
        self.opened.clear()


def times(benchmark: Any, name: str) -> None:
    stats = benchmark.stats.stats
    measure(TABLE, f"{name}: seconds per run, best", stats.min, "s")
    measure(TABLE, f"{name}: seconds per run, median", stats.median, "s")


def expected_backfill_jobs(path: Path) -> int:
    return count(path, "SELECT count(*) FROM events WHERE type LIKE 'd0:orders:%'")


def test_backfill_first_run(benchmark: Any, stored_events: tuple[Path, str], tmp_path: Path) -> None:
    template, backfilled = stored_events
    runs = Runs(lambda repairs: backfill(repairs, backfilled))
    benchmark.group = BACKFILL
    benchmark.pedantic(runs.run, setup=lambda: runs.open(tmp_path / "first.db", template), rounds=ROUNDS)
    runs.close()
    wanted = expected_backfill_jobs(template)
    for report in runs.reports:
        assert (report.examined, report.created, report.skipped) == (EVENTS, wanted, 0)
        assert (report.left, report.next) == (0, None)
    assert count(tmp_path / "first.db", "SELECT count(*) FROM dispatch_jobs") == wanted
    record(TABLE, BACKFILL, "first run", EVENTS, benchmark)
    times(benchmark, "backfill, first run")
    measure(TABLE, "backfill, first run: jobs created", wanted, "jobs")


def test_backfill_second_run(benchmark: Any, stored_events: tuple[Path, str], tmp_path: Path) -> None:
    template, backfilled = stored_events
    path = fresh_copy(template, tmp_path / "second.db")
    runs = Runs(lambda repairs: backfill(repairs, backfilled))
    runs.run(runs.open(path)[0][0])  # the first run, untimed
    benchmark.group = BACKFILL
    benchmark.pedantic(runs.run, setup=lambda: runs.open(path), rounds=ROUNDS)
    runs.close()
    wanted = expected_backfill_jobs(template)
    first, *again = runs.reports
    assert (first.created, first.skipped) == (wanted, 0)
    for report in again:
        assert (report.examined, report.created, report.skipped) == (EVENTS, 0, wanted)
    record(TABLE, BACKFILL, "second run", EVENTS, benchmark)
    times(benchmark, "backfill, second run (all skipped)")


def test_redrive_mended_dead_letters(benchmark: Any, mended_letters: Path, tmp_path: Path) -> None:
    runs = Runs(redrive_dead_letters)
    benchmark.group = REDRIVE
    path = tmp_path / "redrive.db"
    benchmark.pedantic(runs.run, setup=lambda: runs.open(path, mended_letters), rounds=ROUNDS)
    runs.close()
    jobs = count(path, "SELECT count(*) FROM dispatch_jobs")
    for report in runs.reports:
        assert (report.examined, report.resolved, report.left, report.next) == (LETTERS, LETTERS, 0, None)
        assert (report.created, report.skipped) == (jobs, 0)
    assert count(path, "SELECT count(*) FROM dead_letters") == 0
    assert count(path, "SELECT coalesce(sum(count), 0) FROM event_type_counts") == LETTERS, "each counted"
    record(TABLE, REDRIVE, "mended", LETTERS, benchmark)
    times(benchmark, "re-drive")
    measure(TABLE, "re-drive: jobs created per letter", jobs / LETTERS, "jobs")
