"""The MongoDB store's subscriptions through pymongo's real client, against the
wire server: what only a server shows (a majority point behind the last write,
BSON as other drivers write it, pre- and post-images, history that left the oplog)."""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterator

import pytest
from bson.timestamp import Timestamp
from pymongo.database import Database

from processor.loop import Processor
from processor.metrics import Metrics
from processor.stores.base import StoreUnavailable, SubscriptionChange
from processor.stores.mongo import Checkpoint, MongoStore, MongoSubscriptions
from tests.fake_mongo import Document, Tokens, sample
from tests.processor.harness import FAST
from tests.processor.wire_documents import UNDECODABLE, event, subscription, undecodable
from tests.wire_mongo import WireMongo

UNAUTHORIZED = 13
ORDERS = "orders:*:*:*"
BILLING = "billing:*:*:*"


@pytest.fixture
def store(database: Database[Document]) -> Iterator[MongoStore]:
    opened = MongoStore(database, Tokens())
    yield opened
    opened.close()


def held(changes: list[SubscriptionChange]) -> dict[str, Document | None]:
    """Each subscription as the changes leave it: None, deleted or skipped."""
    return {change.subscription_id: change.document for change in changes}


def problems(changes: list[SubscriptionChange]) -> dict[str, str | None]:
    """Why the store could not read each subscription, None where it could."""
    return {change.subscription_id: change.problem for change in changes}


def shapes(changes: list[SubscriptionChange]) -> list[tuple[str, str | None, bool | None, int]]:
    """(id, pattern, active, effective_after) of each change, None for a deletion."""
    return [
        (
            c.subscription_id,
            None if c.document is None else c.document["event_type_pattern"],
            None if c.document is None else c.document["active"],
            c.effective_after,
        )
        for c in changes
    ]


def order_of(cluster_time: Timestamp) -> int:
    """A cluster time as the store's positions have it (``SubscriptionChange.effective_after``)."""
    return (cluster_time.time << 32) | cluster_time.inc


def now(wire: WireMongo) -> int:
    return order_of(wire.engine.cluster_time())


# -- the load: nothing between the stream's start and the read ---------------------------------


def test_a_subscription_written_while_the_majority_point_lags_is_in_the_load(
    wire: WireMongo, database: Database[Document], store: MongoStore
) -> None:
    store.open_feed(None)
    with contextlib.ExitStack() as lag:
        lag.enter_context(wire.majority_lags())
        database["subscriptions"].insert_one(subscription("late"))
        written = now(wire)

        def catch_up(name: str, body: Document) -> None:
            # The majority point reaches the write while a read waits for it; a read
            # that asks for nothing that late is answered from behind it.
            after = (body.get("readConcern") or {}).get("afterClusterTime")
            waits = after is not None and order_of(after) >= written
            if name == "find" and body.get("find") == "subscriptions" and waits:
                lag.close()

        wire.when(catch_up)
        changes = store.subscription_changes()
    assert held(changes)["late"] is not None
    assert store.subscription_changes() == []  # nothing comes twice either


# -- what pymongo cannot decode -------------------------------------------------------------


@pytest.mark.parametrize("kind", UNDECODABLE)
def test_a_subscription_pymongo_cannot_decode_is_skipped_and_the_others_load(
    kind: str,
    wire: WireMongo,
    database: Database[Document],
    store: MongoStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    database["subscriptions"].insert_one(subscription("before"))
    wire.insert_raw("subscriptions", undecodable(subscription("bad"), kind))
    database["subscriptions"].insert_one(subscription("after"))
    store.open_feed(None)
    with caplog.at_level(logging.ERROR):
        changes = store.subscription_changes()
    loaded = held(changes)
    assert loaded["before"] is not None and loaded["after"] is not None
    assert loaded["bad"] is None and "cannot be decoded" in (problems(changes)["bad"] or "")
    assert any("'bad'" in r.getMessage() and "cannot be decoded" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind", UNDECODABLE)
def test_a_subscription_pymongo_cannot_decode_in_the_stream_is_skipped_and_the_others_follow(
    kind: str,
    wire: WireMongo,
    database: Database[Document],
    store: MongoStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store.open_feed(None)
    assert store.subscription_changes() == []
    wire.insert_raw("subscriptions", undecodable(subscription("bad"), kind))
    database["subscriptions"].insert_one(subscription("after"))
    with caplog.at_level(logging.ERROR):
        changes = store.subscription_changes()
    assert held(changes)["bad"] is None and "cannot be decoded" in (problems(changes)["bad"] or "")
    assert held(changes)["after"] is not None
    assert any("'bad'" in r.getMessage() and "cannot be decoded" in r.getMessage() for r in caplog.records)


def test_a_subscription_pymongo_cannot_decode_counts_as_invalid_and_the_others_match(
    wire: WireMongo, database: Database[Document], store: MongoStore, metrics: Metrics
) -> None:
    store.fence(1, "test")
    feed = store.open_feed(None)
    assert feed.next_batch(10, 0.01).entries == []  # the stream opens at the current point
    wire.insert_raw("subscriptions", undecodable(subscription("bad"), UNDECODABLE[0]))
    database["subscriptions"].insert_one(subscription("good"))
    database["events"].insert_one(event())
    processor = Processor(store, FAST, metrics)
    report = processor.process(feed.next_batch(10, 1.0))
    assert [job.subscription_id for job in report.created] == ["good"]
    assert sample(metrics, "fc_stream_subscriptions_invalid_total") == 1


# -- through a mongos: a quiet read is not caught up ---------------------------------------------


def test_a_subscription_held_in_a_mongos_merge_is_read_before_the_event_written_after_it(
    wire: WireMongo, database: Database[Document], store: MongoStore
) -> None:
    feed = store.open_feed(None)
    assert feed.next_batch(10, 0.01).entries == []  # the stream opens at the current point
    assert store.subscription_changes() == []
    database["subscriptions"].insert_one(subscription("new"))
    database["events"].insert_one(event())
    batch = feed.next_batch(10, 1.0)
    assert len(batch.entries) == 1
    wire.merge_lags("subscriptions", replies=3)
    changes = store.subscription_changes()
    assert held(changes)["new"] is not None
    assert changes[0].effective_after < batch.entries[0].order


def test_a_subscriptions_stream_that_stays_behind_the_events_gives_up_to_be_retried(
    wire: WireMongo, database: Database[Document]
) -> None:
    ticks = itertools.count()
    subscriptions = MongoSubscriptions(database, clock=lambda: next(ticks) * 0.5)
    subscriptions.start(None)
    assert subscriptions.changes() == []
    database["subscriptions"].insert_one(subscription("new"))
    through = wire.engine.cluster_time()
    wire.merge_lags("subscriptions", replies=1_000)
    with pytest.raises(StoreUnavailable, match="a mongos waiting on a shard"):
        subscriptions.changes(through)
    wire.merge_lags("subscriptions", replies=0)
    assert held(subscriptions.changes(through))["new"] is not None
    subscriptions.close()


# -- pre- and post-images: each change as it left the subscription ---------------------------


def test_two_updates_read_together_each_carry_the_subscription_as_they_left_it(
    wire: WireMongo, database: Database[Document], store: MongoStore
) -> None:
    database["subscriptions"].insert_one(subscription("sub", ORDERS))
    store.open_feed(None)
    store.subscription_changes()
    subscriptions = database["subscriptions"]
    subscriptions.update_one({"_id": "sub"}, {"$set": {"event_type_pattern": BILLING}})
    first = now(wire)
    subscriptions.update_one({"_id": "sub"}, {"$set": {"active": False}})
    second = now(wire)
    assert shapes(store.subscription_changes()) == [
        ("sub", BILLING, True, first),
        ("sub", BILLING, False, second),
    ]


@pytest.mark.parametrize("merge", ["answering at once", "held by a mongos"])
def test_a_restart_hands_out_the_subscriptions_as_they_stood_at_the_feeds_start_then_each_change(
    merge: str, wire: WireMongo, database: Database[Document]
) -> None:
    subscriptions = database["subscriptions"]
    subscriptions.insert_one(subscription("changed", ORDERS))
    subscriptions.insert_one(subscription("deleted", ORDERS))
    subscriptions.insert_one(subscription("kept", ORDERS))
    first = MongoStore(database, Tokens())
    first.open_feed(None)
    first.subscription_changes()  # the first run turns the images on, as any start does
    first.close()
    start = Checkpoint(None, wire.engine.cluster_time()).dumps()  # where the last run stopped
    subscriptions.update_one({"_id": "changed"}, {"$set": {"event_type_pattern": BILLING}})
    updated = now(wire)
    subscriptions.delete_one({"_id": "deleted"})
    deleted = now(wire)
    subscriptions.insert_one(subscription("created", BILLING))
    created = now(wire)
    restarted = MongoStore(database, Tokens())
    restarted.open_feed(start)
    if merge == "held by a mongos":  # its first batch and two getMores: quiet, and behind
        wire.merge_lags("subscriptions", replies=3)
    changes = restarted.subscription_changes()
    restarted.close()
    as_of_start, since = changes[:3], changes[3:]
    assert sorted(shapes(as_of_start)) == [
        ("changed", ORDERS, True, -1),
        ("deleted", ORDERS, True, -1),
        ("kept", ORDERS, True, -1),
    ]
    assert shapes(since) == [
        ("changed", BILLING, True, updated),
        ("deleted", None, None, deleted),
        ("created", BILLING, True, created),
    ]


# -- where the server keeps no images, or no history --------------------------------------------


def test_where_images_cannot_be_turned_on_updates_carry_the_subscription_as_it_is_and_a_warning_says_so(
    wire: WireMongo, database: Database[Document], store: MongoStore, caplog: pytest.LogCaptureFixture
) -> None:
    database["subscriptions"].insert_one(subscription("sub", ORDERS))
    wire.fail_command("collMod", code=UNAUTHORIZED)
    store.open_feed(None)
    with caplog.at_level(logging.WARNING):
        store.subscription_changes()
    database["subscriptions"].update_one({"_id": "sub"}, {"$set": {"event_type_pattern": BILLING}})
    updated = now(wire)
    assert shapes(store.subscription_changes()) == [("sub", BILLING, True, updated)]
    assert any("changeStreamPreAndPostImages" in r.getMessage() for r in caplog.records)


def restarted_from(
    database: Database[Document], start: str, caplog: pytest.LogCaptureFixture
) -> list[SubscriptionChange]:
    """The subscription changes a store restarted from ``start`` hands out first, warnings captured."""
    store = MongoStore(database, Tokens())
    store.open_feed(start)
    with caplog.at_level(logging.WARNING):
        changes = store.subscription_changes()
    store.close()
    return changes


def test_a_restart_over_writes_that_kept_no_images_loads_the_subscriptions_as_they_are_and_warns(
    wire: WireMongo, database: Database[Document], caplog: pytest.LogCaptureFixture
) -> None:
    database["subscriptions"].insert_one(subscription("sub", ORDERS))
    start = Checkpoint(None, wire.engine.cluster_time()).dumps()
    # Written before any start turned the images on: the server kept none of it.
    database["subscriptions"].update_one({"_id": "sub"}, {"$set": {"event_type_pattern": BILLING}})
    changes = restarted_from(database, start, caplog)
    assert shapes(changes) == [("sub", BILLING, True, -1)]
    assert any("image was not found" in r.getMessage() for r in caplog.records)


def test_a_restart_whose_start_left_the_oplog_loads_the_subscriptions_as_they_are_and_warns(
    wire: WireMongo, database: Database[Document], caplog: pytest.LogCaptureFixture
) -> None:
    database["subscriptions"].insert_one(subscription("sub", ORDERS))
    start = Checkpoint(None, wire.engine.cluster_time()).dumps()
    database["subscriptions"].update_one({"_id": "sub"}, {"$set": {"event_type_pattern": BILLING}})
    database["subscriptions"].insert_one(subscription("other", ORDERS))
    wire.engine.truncate_oplog()  # the update is gone from it
    changes = restarted_from(database, start, caplog)
    assert sorted(shapes(changes)) == [("other", ORDERS, True, -1), ("sub", BILLING, True, -1)]
    assert any("history since the feed's start is gone" in r.getMessage() for r in caplog.records)
