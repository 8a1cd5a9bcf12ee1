"""The MongoDB store's feed and commits through pymongo's real client, against the
wire server: what only a server shows (BSON as other drivers write it, the 16 MB
limits, write concern errors, invalidates, post-batch resume tokens)."""

from __future__ import annotations

import itertools
import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
import pytest
from bson import ObjectId, json_util
from pymongo.database import Database

from processor.metrics import Metrics
from processor.models import MAX_DEAD_LETTER_RAW, PENDING, DispatchJob
from processor.projections import Tally
from processor.stores.mongo import CATCH_UP_SKEW, MARKS_PER_TRANSACTION, Checkpoint, MongoFeed, MongoStore
from tests.fake_mongo import Document, Running, Tokens, sample
from tests.processor.harness import wait_until
from tests.processor.wire_documents import SHIPPED, UNDECODABLE, event, subscription, undecodable
from tests.wire_mongo import WireMongo

MAX_BSON = 16 * 1024 * 1024
DEADLINE = 30.0  # seconds a test waits for what it expects, at most


def publish(database: Database[Document], **fields: Any) -> str:
    document = event(**fields)
    database["events"].insert_one(document)
    return str(document["_id"])


def subscribe(database: Database[Document], id: str = "all") -> None:
    database["subscriptions"].insert_one(subscription(id))


def jobs(database: Database[Document]) -> set[str]:
    return {d["event_id"] for d in database["dispatch_jobs"].find()}


def run_once(database: Database[Document], tokens: Tokens) -> None:
    """A first run, subscribed to everything, that processed one event and stopped,
    leaving its checkpoint in ``tokens`` and the store."""
    subscribe(database)
    store = MongoStore(database, tokens)
    with Running(store, tokens, Metrics()):
        processed = publish(database)
        wait_until(lambda: jobs(database) == {processed}, DEADLINE, "the first job")
    store.close()


def letters(database: Database[Document]) -> dict[str, Document]:
    return {d["event_id"]: d for d in database["dead_letters"].find()}


# -- what pymongo cannot decode, and what the server cannot send ---------------------------


@pytest.mark.parametrize("kind", UNDECODABLE)
def test_an_event_pymongo_cannot_decode_is_dead_lettered_alone_and_the_others_get_their_jobs(
    kind: str, wire: WireMongo, database: Database[Document], tokens: Tokens, metrics: Metrics
) -> None:
    subscribe(database)
    store = MongoStore(database, tokens)
    with Running(store, tokens, metrics):
        before = publish(database)
        document = event()
        bad = str(document["_id"])
        wire.insert_raw("events", undecodable(document, kind))
        after = publish(database)
        wait_until(lambda: jobs(database) == {before, after}, DEADLINE, "the jobs of the events around it")
        wait_until(lambda: bad in letters(database), DEADLINE, "its dead letter")
    store.close()
    assert "cannot be decoded as BSON" in letters(database)[bad]["reason"]
    assert sample(metrics, "fc_stream_events_processed_total") == 3


def test_an_insert_near_16_mb_is_dead_lettered_and_the_stream_goes_past_it(
    database: Database[Document], tokens: Tokens, metrics: Metrics
) -> None:
    subscribe(database)
    store = MongoStore(database, tokens)
    with Running(store, tokens, metrics):
        document = event(data={"blob": ""})
        # As large as MongoDB stores: its change event cannot be, with the event's own fields.
        document["data"]["blob"] = "x" * (MAX_BSON - len(bson.encode(document)))
        database["events"].insert_one(document)
        huge = str(document["_id"])
        after = publish(database)
        wait_until(lambda: jobs(database) == {after}, DEADLINE, "the job of the event after it")
        wait_until(lambda: huge in letters(database), DEADLINE, "its dead letter")
    store.close()
    letter = letters(database)[huge]
    assert "over the limit" in letter["reason"]
    assert json_util.loads(letter["raw"]) == {"_id": ObjectId(huge)}, "the server sent its key only"


def test_a_large_invalid_event_is_dead_lettered_within_the_server_s_limits(
    database: Database[Document], tokens: Tokens, metrics: Metrics
) -> None:
    subscribe(database)
    store = MongoStore(database, tokens, max_event_bytes=MAX_BSON)
    with Running(store, tokens, metrics):
        invalid = event(data={"blob": "x" * (8 * 1024 * 1024)})
        del invalid["type"]
        database["events"].insert_one(invalid)
        after = publish(database)
        wait_until(lambda: jobs(database) == {after}, DEADLINE, "the job of the event after it")
    store.close()
    letter = letters(database)[str(invalid["_id"])]
    assert "type" in letter["reason"]
    assert len(letter["raw"]) == MAX_DEAD_LETTER_RAW, "its text cut to the cap, whatever its size"


# -- write concern ---------------------------------------------------------------------------


def test_a_write_concern_error_on_the_jobs_is_retried_not_taken_for_success(
    wire: WireMongo, database: Database[Document], tokens: Tokens, metrics: Metrics
) -> None:
    subscribe(database)
    store = MongoStore(database, tokens)
    with Running(store, tokens, metrics):
        wire.fail_command(
            "insert",
            collection="dispatch_jobs",
            write_concern_error={
                "code": 64,
                "codeName": "WriteConcernFailed",
                "errmsg": "waiting for replication timed out",
                "errInfo": {"wtimeout": True},
            },
        )
        published = publish(database)
        wait_until(lambda: sample(metrics, "fc_stream_dispatch_jobs_created_total") == 1, DEADLINE, "the job")
    store.close()
    assert sample(metrics, "fc_stream_store_errors_total", operation="commit") == 1, "the commit was retried"
    assert sample(metrics, "fc_stream_duplicate_jobs_suppressed_total") == 0, "the job is the retry's"
    assert jobs(database) == {published}


def test_a_large_tally_is_counted_in_transactions_of_bounded_size_and_exactly_once(
    wire: WireMongo, database: Database[Document], tokens: Tokens
) -> None:
    store = MongoStore(database, tokens)
    marks_read: list[int] = []

    def record(command: str, body: Document) -> None:
        if command == "find" and body.get("find") == "projection_marks":
            marks_read.append(len(body["filter"]["_id"]["$in"]))

    wire.when(record)
    moment = datetime(2024, 5, 1, tzinfo=UTC)
    events = [(n, str(ObjectId()), SHIPPED, "acme", moment) for n in range(2 * MARKS_PER_TRANSACTION + 10)]
    store.fence(1, "test")
    store.count(Tally(events, [], None))
    store.count(Tally(events[:10], [], None))  # a replay of part of it
    store.close()
    assert max(marks_read) <= MARKS_PER_TRANSACTION and len(marks_read) == 4
    counted = database["event_type_counts"].find_one({"_id": SHIPPED})
    assert counted is not None and counted["count"] == len(events)


MOMENT = datetime(2024, 5, 1, tzinfo=UTC)


def fenced(store: MongoStore) -> MongoStore:
    """``store``, leading: its counts are accepted."""
    store.fence(1, "test")
    return store


def test_a_batch_and_its_jobs_are_counted_in_one_transaction(
    wire: WireMongo, database: Database[Document], tokens: Tokens
) -> None:
    store = fenced(MongoStore(database, tokens))
    events = [(n, str(ObjectId()), SHIPPED, "acme", MOMENT) for n in range(100)]
    jobs = [
        DispatchJob(
            f"job-{e[1]}-{n}",
            e[1],
            f"s{n}",
            "acme",
            PENDING,
            "https://x.example",
            "p",
            MOMENT,
            0,
            None,
            None,
            MOMENT,
        )
        for e in events
        for n in (1, 2)
    ]
    started: list[str] = []
    wire.when(lambda command, body: started.append(command) if body.get("startTransaction") else None)
    store.count(Tally(events, jobs, None))
    store.close()
    assert len(started) == 1
    stats = database["subscription_stats"].find_one({"_id": "s1"})
    assert stats is not None and stats["jobs_created"] == 100


def test_a_tally_whose_event_types_pass_16_mb_together_is_counted_in_commands_that_fit(
    wire: WireMongo, database: Database[Document], tokens: Tokens
) -> None:
    store = fenced(MongoStore(database, tokens))
    long_types = ["a" * 9_000_000, "b" * 9_000_000]  # an event type has no length limit of its own
    events = [(n, str(ObjectId()), kind, "acme", MOMENT) for n, kind in enumerate(long_types)]
    store.count(Tally(events, [], None))
    store.close()
    counted = {d["_id"][:1]: d["count"] for d in database["event_type_counts"].find()}
    assert counted == {"a": 1, "b": 1}


# -- the stream's own position, and its end -----------------------------------------------


def test_a_batch_stops_reading_at_its_deadline_under_a_steady_trickle(
    wire: WireMongo, database: Database[Document]
) -> None:
    ticks = itertools.count()
    feed = MongoFeed(database, None, clock=lambda: next(ticks) * 0.01)
    feed.next_batch(100, 0.05)  # a first start: the current point

    def one_more_event(command: str, body: Document) -> None:
        if command == "getMore" and body.get("collection") == "events":
            wire.engine.database["events"].insert_one(event())  # every read finds one

    wire.when(one_more_event)
    batch = feed.next_batch(100, 0.05)
    feed.close()
    assert 0 < len(batch.entries) < 100, "closed by its deadline, not by its size"
    assert batch.more, "and the next batch is due at once"


def test_an_idle_stream_s_checkpoint_moves_on_with_the_stream_s_own_time(
    database: Database[Document],
) -> None:
    feed = MongoFeed(database, None)
    feed.next_batch(10, 0.05)
    publish(database)
    (with_event,) = [b for b in [feed.next_batch(10, 0.05)] if b.entries]
    at_event = Checkpoint.loads(with_event.resume_token)
    for number in range(3):
        database["elsewhere"].insert_one({"_id": number})
    idle = feed.next_batch(10, 0.05)
    feed.close()
    at_idle = Checkpoint.loads(idle.resume_token)
    assert not idle.entries
    assert at_event is not None and at_idle is not None
    assert at_event.cluster_time is not None and at_idle.cluster_time is not None
    assert at_idle.cluster_time > at_event.cluster_time, "a quiet period does not widen a catch-up"


@pytest.mark.parametrize("how", ["dropped", "renamed"])
def test_events_dropped_or_renamed_are_followed_on_the_new_collection_without_lost_history(
    how: str, database: Database[Document], tokens: Tokens, metrics: Metrics
) -> None:
    subscribe(database)
    store = MongoStore(database, tokens)
    with Running(store, tokens, metrics):
        first = publish(database)
        wait_until(lambda: jobs(database) == {first}, DEADLINE, "the first job")
        if how == "dropped":
            database.drop_collection("events")
        else:
            database["events"].rename("events_archive")
        later = publish(database)
        wait_until(lambda: jobs(database) == {first, later}, DEADLINE, "the job after the invalidate")
    store.close()
    assert sample(metrics, "fc_stream_lost_history_recoveries_total") == 0


def test_a_catch_up_says_when_events_whose_id_is_not_an_object_id_cannot_be_recovered(
    wire: WireMongo,
    database: Database[Document],
    tokens: Tokens,
    metrics: Metrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run_once(database, tokens)
    dated = publish(database)
    publish(database, _id="order-7")
    wire.engine.truncate_oplog()
    second = MongoStore(database, tokens)
    with caplog.at_level(logging.WARNING, logger="processor.stores.mongo"), Running(second, tokens, metrics):
        wait_until(lambda: dated in jobs(database), DEADLINE, "the dated event caught up")
    second.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("not an ObjectId" in message for message in errors), errors


@pytest.mark.parametrize(("skew", "recovered"), [(CATCH_UP_SKEW, True), (timedelta(seconds=30), False)])
def test_a_catch_up_recovers_the_events_of_producers_whose_clocks_are_off_by_the_skew_allowed(
    skew: timedelta, recovered: bool, wire: WireMongo, database: Database[Document], tokens: Tokens
) -> None:
    metrics = Metrics()
    run_once(database, tokens)
    # Inserted while the processor is away, by a producer whose clock is 90 s behind.
    late = publish(database, _id=ObjectId.from_datetime(datetime.now(UTC) - timedelta(seconds=90)))
    marker = publish(database)
    wire.engine.truncate_oplog()
    second = (
        MongoStore(database, tokens) if skew is None else MongoStore(database, tokens, catch_up_skew=skew)
    )
    with Running(second, tokens, metrics):
        wait_until(lambda: marker in jobs(database), DEADLINE, "the catch-up")
        after = publish(database)
        wait_until(lambda: after in jobs(database), DEADLINE, "the stream followed again")
    second.close()
    assert (late in jobs(database)) is recovered


def test_a_catch_up_reads_the_collection_once_the_majority_point_reaches_the_new_stream_s_start(
    wire: WireMongo, database: Database[Document], tokens: Tokens, metrics: Metrics
) -> None:
    run_once(database, tokens)
    wire.hold_majority()
    while_down = publish(database)  # applied, not majority-committed yet
    wire.engine.truncate_oplog()

    def release_once_a_read_waits() -> None:
        try:
            wait_until(lambda: wire.reads_waited > 0, DEADLINE, "a read waiting for the majority point")
        finally:
            wire.release_majority()

    releaser = threading.Thread(target=release_once_a_read_waits, daemon=True)
    releaser.start()
    second = MongoStore(database, tokens)
    with Running(second, tokens, metrics):
        wait_until(lambda: while_down in jobs(database), DEADLINE, "the event inserted while away")
    second.close()
    releaser.join(timeout=DEADLINE)


def test_a_catch_up_whose_first_read_fails_is_begun_again_not_skipped(
    wire: WireMongo, database: Database[Document], tokens: Tokens, metrics: Metrics
) -> None:
    run_once(database, tokens)
    while_down = publish(database)
    database["elsewhere"].insert_one({"_id": 1})
    wire.engine.truncate_oplog()
    armed = threading.Event()

    def fail_the_first_count(command: str, body: Document) -> None:
        # The catch-up's count of undatable ids fails as a failover makes it: the
        # read and the driver's retry of it.
        counting = command == "aggregate" and "$not" in str(body.get("pipeline"))
        if counting and not armed.is_set():
            armed.set()
            wire.fail_command("aggregate", close_connection=True, times=2, collection="events")

    wire.when(fail_the_first_count)
    second = MongoStore(database, tokens)
    with Running(second, tokens, metrics):
        after = publish(database)
        wait_until(lambda: {while_down, after} <= jobs(database), DEADLINE, "the events away and after")
    second.close()
    assert armed.is_set()
    assert sample(metrics, "fc_stream_lost_history_recoveries_total") == 1
