"""The embedded store's events: indexed by ``seq`` and ``id`` only, ids made in
time order for events given without one, and a batch written whole or not at all."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import pytest

from processor.stores.sqlite import Catalog, EventExists, SqliteStore, connect

SHIPPED = "orders:fulfillment:shipment:shipped"


def event(id: str | None = None) -> dict[str, object]:
    return {"id": id, "type": SHIPPED, "client_id": "acme", "data": {"n": 1}}


def event_indexes(path: Path) -> list[str]:
    with sqlite3.connect(path) as connection:
        return sorted(name for _, name, *_ in connection.execute("PRAGMA index_list(events)"))


def stored_ids(path: Path) -> list[str]:
    with sqlite3.connect(path) as connection:
        return [row[0] for row in connection.execute("SELECT id FROM events ORDER BY seq")]


def old_store_file(path: Path) -> sqlite3.Connection:
    """A store file made with the events indexes of before, and a connection to it."""
    old = connect(path)
    old.execute("CREATE INDEX events_type ON events (type)")
    old.execute("CREATE INDEX events_client_time ON events (client_id, time)")
    old.execute("INSERT INTO events (id, type, client_id) VALUES ('kept', ?, 'acme')", (SHIPPED,))
    return old


def test_a_store_file_with_the_old_events_indexes_loses_them_on_open_and_keeps_its_events(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    old_store_file(path).close()
    SqliteStore(path).close()
    assert event_indexes(path) == ["sqlite_autoindex_events_1"], "the id's unique index only"
    assert stored_ids(path) == ["kept"]


def test_a_store_file_whose_old_indexes_cannot_be_dropped_now_opens_and_drops_them_later(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    old = old_store_file(path)
    old.execute("BEGIN IMMEDIATE")  # another writer, holding the file past the busy timeout
    SqliteStore(path).close()
    assert "events_type" in event_indexes(path), "a leftover index costs speed only"
    old.execute("ROLLBACK")
    SqliteStore(path).close()
    assert event_indexes(path) == ["sqlite_autoindex_events_1"]
    old.close()


def test_ids_made_for_events_given_without_one_are_32_hex_digits_in_time_order(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "store.db")
    before = time.time_ns() // 1_000_000
    ids = catalog.insert_events([event(), event("given"), event()]) + catalog.insert_events([event()])
    after = time.time_ns() // 1_000_000
    catalog.close()
    made = [ids[0], ids[2], ids[3]]
    assert ids[1] == "given"
    assert all(re.fullmatch(r"[0-9a-f]{32}", made_id) for made_id in made), made
    moments = [int(made_id[:12], 16) for made_id in made]
    assert before <= moments[0] <= moments[1] <= moments[2] <= after, "milliseconds first, in order"
    assert len(set(made)) == 3


@pytest.mark.parametrize(
    ("batch", "index"),
    [
        ([event("new"), event("taken"), event()], 1),
        ([event("x"), event("y"), event("x")], 2),
        ([event("new"), event("a\x00b")], 1),
    ],
    ids=["taken by a stored event", "given twice in the batch", "taken, with a NUL in it"],
)
def test_a_batch_with_a_taken_id_writes_nothing_and_names_the_first(
    tmp_path: Path, batch: list[dict[str, object]], index: int
) -> None:
    path = tmp_path / "store.db"
    catalog = Catalog(path)
    catalog.insert_events([event("taken"), event("a\x00b")])
    with pytest.raises(EventExists) as refused:
        catalog.insert_events(batch)
    catalog.close()
    assert refused.value.index == index and refused.value.event_id == batch[index]["id"]
    assert stored_ids(path) == ["taken", "a\x00b"]
