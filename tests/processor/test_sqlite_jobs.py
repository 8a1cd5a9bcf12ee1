"""The embedded store's jobs, keyed in the feed's order: unique by their event's
``seq``, every index growing where new jobs go, and files made before that
moved to it on open."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from processor.jobs import job_id
from processor.models import PENDING, DispatchJob
from processor.stores.base import ProcessedBatch
from processor.stores.sqlite import LEGACY_JOBS_TABLE, Catalog, SqliteStore, connect
from tests.processor.harness import FAST, Publisher, Running, wait_until

NOW = datetime(2025, 3, 1, 12, tzinfo=UTC)
SHIPPED = "orders:fulfillment:shipment:shipped"


def job(event_id: str, subscription_id: str) -> DispatchJob:
    return DispatchJob(
        job_id(event_id, subscription_id),
        event_id,
        subscription_id,
        "acme",
        PENDING,
        "https://hooks.example.com/in",
        "default",
        NOW,
        0,
        None,
        None,
        NOW,
    )


def indexes(path: Path) -> dict[str, list[str]]:
    """Each index of ``dispatch_jobs`` by name, with its columns in key order."""
    connection = sqlite3.connect(path)
    found = {
        name: [column for _, _, column in connection.execute(f"PRAGMA index_info('{name}')")]
        for _, name, *_ in connection.execute("PRAGMA index_list(dispatch_jobs)")
    }
    connection.close()
    return found


def test_a_jobs_key_begins_with_its_events_seq_and_a_replay_of_it_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SqliteStore(path)
    jobs = [job("e1", "a"), job("e1", "b"), job("e2", "a")]
    orders = {"e1": 7, "e2": 8}
    first = store.commit(ProcessedBatch(jobs, [], None, orders=orders))
    again = store.commit(ProcessedBatch([job("e2", "a"), job("e1", "b")], [], None, orders=orders))
    store.close()
    assert (first.jobs_created, again.jobs_created, again.duplicates) == (3, 0, 2)
    keys = indexes(path)
    unique = [columns for name, columns in keys.items() if name.startswith("sqlite_autoindex")]
    assert unique == [["event_seq", "subscription_id"]]
    assert all(columns[0] != "event_id" for name, columns in keys.items() if name != "dispatch_jobs_unplaced")
    rows = sqlite3.connect(path).execute("SELECT event_id, event_seq FROM dispatch_jobs ORDER BY seq")
    assert list(rows) == [("e1", 7), ("e1", 7), ("e2", 8)]


def test_a_job_whose_event_has_no_seq_is_unique_by_its_ids(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    first = store.commit(ProcessedBatch([job("e1", "a")], [], None))
    again = store.commit(ProcessedBatch([job("e1", "a"), job("e1", "b")], [], None))
    store.close()
    assert (first.jobs_created, again.jobs_created, again.duplicates) == (1, 1, 1)


def test_jobs_are_found_by_event_id_whether_or_not_the_event_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    publisher = Publisher(path)
    stored = publisher.publish(SHIPPED)
    store = SqliteStore(path)
    seq = publisher.max_seq()
    store.commit(
        ProcessedBatch([job(stored, "a"), job("gone", "a"), job(stored, "b")], [], None, orders={stored: seq})
    )
    store.close()
    catalog = Catalog(path)
    assert [j["subscription_id"] for j in catalog.dispatch_jobs(event_id=stored, limit=10).items] == [
        "a",
        "b",
    ]
    assert [j["event_id"] for j in catalog.dispatch_jobs(event_id="gone", limit=10).items] == ["gone"]
    assert catalog.dispatch_jobs(event_id="never", limit=10).items == []


def legacy_file(path: Path) -> list[str]:
    """A store file as made before jobs were keyed by seq: two events, their
    jobs, and a job whose event was deleted since. Returns the events' ids."""
    connect(path).close()
    old = sqlite3.connect(path)
    old.execute("DROP TABLE dispatch_jobs")
    old.executescript(LEGACY_JOBS_TABLE)
    old.execute(
        "INSERT INTO subscriptions (id, client_id, name, event_type_pattern, target, pool_code) "
        "VALUES ('all', 'acme', 'all', '*:*:*:*', 'https://hooks.example.com/in', 'default')"
    )
    ids = [
        old.execute(
            "INSERT INTO events (type, client_id) VALUES (?, 'acme') RETURNING id", (SHIPPED,)
        ).fetchone()[0]
        for _ in range(2)
    ]
    for event_id in (ids[1], "deleted", ids[0]):
        j = job(event_id, "all")
        old.execute(
            "INSERT INTO dispatch_jobs (id, event_id, subscription_id, client_id, status, target, pool_code, "
            "scheduled_at, attempts, created_at) VALUES (?, ?, ?, 'acme', ?, ?, 'default', 'now', 0, 'now')",
            (j.id, event_id, "all", PENDING, j.target),
        )
    old.commit()
    old.close()
    return ids


def test_a_store_file_from_before_is_moved_to_the_new_keys_on_open_and_keeps_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    ids = legacy_file(path)
    SqliteStore(path).close()
    rows = sqlite3.connect(path).execute("SELECT seq, event_id, event_seq FROM dispatch_jobs ORDER BY seq")
    assert list(rows) == [(1, ids[1], 2), (2, "deleted", None), (3, ids[0], 1)]
    assert sorted(indexes(path)) == [
        "dispatch_jobs_client",
        "dispatch_jobs_status_scheduled",
        "dispatch_jobs_unplaced",
        "sqlite_autoindex_dispatch_jobs_1",
    ]
    SqliteStore(path).close()  # a second open finds nothing to move
    assert len(list(sqlite3.connect(path).execute("SELECT seq FROM dispatch_jobs"))) == 3


def test_events_processed_again_over_a_moved_file_create_no_job_twice(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    ids = legacy_file(path)
    store = SqliteStore(path, from_beginning=True)
    publisher = Publisher(path)
    with Running(store, publisher, FAST) as processor:
        later = publisher.publish(SHIPPED)
        wait_until(lambda: processor.metrics.events_processed._value.get() == 3, message="the three events")
    assert sorted(publisher.jobs()) == sorted(
        [(ids[0], "all"), (ids[1], "all"), ("deleted", "all"), (later, "all")]
    )
    assert processor.metrics.duplicate_jobs._value.get() == 2


def test_what_an_operator_added_to_the_old_jobs_table_comes_along_when_it_is_moved(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    legacy_file(path)
    old = sqlite3.connect(path)
    old.executescript(
        """
        ALTER TABLE dispatch_jobs ADD COLUMN note TEXT DEFAULT 'kept';
        CREATE INDEX jobs_by_target ON dispatch_jobs (target);
        CREATE TABLE audit (job TEXT);
        CREATE TRIGGER jobs_audited AFTER INSERT ON dispatch_jobs
            BEGIN INSERT INTO audit VALUES (NEW.id); END;
        CREATE VIEW pending AS SELECT id FROM dispatch_jobs WHERE status = 'PENDING';
        """
    )
    old.close()
    store = SqliteStore(path)
    store.commit(ProcessedBatch([job("e9", "all")], [], None, orders={"e9": 9}))
    store.close()
    moved = sqlite3.connect(path)
    assert {row[0] for row in moved.execute("SELECT note FROM dispatch_jobs")} == {"kept", None}
    assert "jobs_by_target" in indexes(path)
    assert list(moved.execute("SELECT job FROM audit")) == [(job("e9", "all").id,)]
    assert len(list(moved.execute("SELECT id FROM pending"))) == 4
