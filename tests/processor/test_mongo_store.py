"""The MongoDB store's own logic, on a fake database with an oplog
(tests/fake_mongo/), driving the real processor: in a thread where the flow
matters, a batch at a time where the exact interleaving does. Change streams,
lost history, network errors, the token's mirror, the documents as written;
what every store must do is the contract suite's (tests/stores/test_contract.py),
which runs on this fake too."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import bson
import pytest
from bson import Decimal128, ObjectId, json_util
from pymongo.errors import AutoReconnect, OperationFailure

from processor.jobs import create_jobs, job_id
from processor.loop import Processor
from processor.metrics import Metrics
from processor.models import DispatchJob, Event, Subscription, parse_event
from processor.projections import Tally, event_key
from processor.stores.base import CommitReport, ProcessedBatch, StoreUnavailable
from processor.stores.mongo import (
    CATCH_UP_SKEW,
    Checkpoint,
    MongoFeed,
    MongoStore,
    ensure_indexes,
    job_document,
)
from tests.fake_mongo import Document, FakeMongo, Running, Tokens, sample
from tests.processor.harness import FAST, wait_until

SHIPPED = "orders:fulfillment:shipment:shipped"
BILLED = "billing:invoice:line:added"
JOB_FIELDS = {
    "_id",
    "event_id",
    "subscription_id",
    "client_id",
    "status",
    "target",
    "pool_code",
    "scheduled_at",
    "attempts",
    "last_attempt_at",
    "last_error",
    "created_at",
}


@pytest.fixture
def fake() -> FakeMongo:
    return FakeMongo()


@pytest.fixture
def mongo(fake: FakeMongo, tokens: Tokens, metrics: Metrics) -> Iterator[MongoStore]:
    store = MongoStore(fake.db, tokens)
    yield store
    store.close()


# -- what other services write ---------------------------------------------------


def subscribe(
    fake: FakeMongo,
    id: str,
    pattern: str = "*:*:*:*",
    client_id: str = "acme",
    target: str = "https://hooks.example.com/in",
    **fields: Any,
) -> str:
    fake.db["subscriptions"].insert_one(
        {
            "_id": id,
            "client_id": client_id,
            "name": f"subscription {id}",
            "event_type_pattern": pattern,
            "target": target,
            "pool_code": "default",
            "active": True,
            **fields,
        }
    )
    return id


def event(type: str = SHIPPED, client_id: str | None = "acme", **fields: Any) -> Document:
    document: Document = {"_id": ObjectId(), "type": type, "source": "orders-service", **fields}
    if client_id is not None:
        document["client_id"] = client_id
    return document


def publish(fake: FakeMongo, type: str = SHIPPED, client_id: str | None = "acme", **fields: Any) -> str:
    document = event(type, client_id, **fields)
    fake.db["events"].insert_one(document)
    return str(document["_id"])


def publish_many(fake: FakeMongo, count: int, type: str = SHIPPED) -> list[str]:
    """``count`` events in one write: the processor sees all or none of them."""
    documents = [event(type) for _ in range(count)]
    fake.db["events"].insert_many(documents)
    return [str(d["_id"]) for d in documents]


def jobs(fake: FakeMongo) -> set[tuple[str, str]]:
    return {(d["event_id"], d["subscription_id"]) for d in fake.db["dispatch_jobs"].find()}


def job_count(fake: FakeMongo) -> int:
    return fake.db["dispatch_jobs"].count_documents({})


def counts(fake: FakeMongo, collection: str) -> dict[str, Document]:
    return {d["_id"]: d for d in fake.db[collection].find()}


class Stepper:
    """The loop's body, a batch at a time: read (retried as the loop does), process."""

    def __init__(self, store: MongoStore, metrics: Metrics, resume_after: str | None = None) -> None:
        self.processor = Processor(store, FAST, metrics)
        self.feed: MongoFeed = store.open_feed(resume_after)

    def step(self, max_events: int = 50) -> CommitReport:
        batch = self.processor.retry("read", self.feed.next_batch, max_events, FAST.max_wait)
        return self.processor.process(batch)

    def close(self) -> None:
        self.feed.close()


@pytest.fixture
def stepper(mongo: MongoStore, metrics: Metrics) -> Iterator[Stepper]:
    stepper = Stepper(mongo, metrics)
    stepper.step()  # the starting point, and the subscriptions as they stand
    yield stepper
    stepper.close()


# -- insert to job -------------------------------------------------------------------


def test_inserted_events_become_jobs_with_exactly_the_spec_fields(
    fake: FakeMongo, mongo: MongoStore, tokens: Tokens, metrics: Metrics
) -> None:
    subscribe(fake, "orders", "orders:*:*:*", target="https://hooks.example.com/orders")
    subscribe(fake, "other-client", "*:*:*:*", client_id="globex")
    with Running(mongo, tokens, metrics):
        shipped = publish(
            fake,
            data={
                "shipped_at": datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
                "parcel": ObjectId(),
                "value": Decimal128(Decimal("19.99")),
                "lines": [{"at": datetime(2024, 5, 1, tzinfo=UTC)}],
            },
            time=datetime(2024, 5, 1, 12, 31, tzinfo=UTC),
        )
        billed = publish(fake, BILLED)
        named = publish(fake, SHIPPED, _id="evt-42")
        wait_until(lambda: job_count(fake) == 2, message="two jobs")
        wait_until(lambda: "billing:invoice:line:added" in counts(fake, "event_type_counts"))
    assert jobs(fake) == {(shipped, "orders"), (named, "orders")}
    assert billed not in {e for e, _ in jobs(fake)}
    assert named == "evt-42", "a string _id is the event's id as it is"
    document = fake.db["dispatch_jobs"].find_one({"_id": job_id(shipped, "orders")})
    assert document is not None
    assert set(document) == JOB_FIELDS
    assert (document["event_id"], document["subscription_id"], document["client_id"]) == (
        shipped,
        "orders",
        "acme",
    )
    assert isinstance(document["event_id"], str), "an ObjectId _id becomes the string id"
    assert (
        document["status"],
        document["attempts"],
        document["last_attempt_at"],
        document["last_error"],
    ) == (
        "PENDING",
        0,
        None,
        None,
    )
    assert (document["target"], document["pool_code"]) == ("https://hooks.example.com/orders", "default")
    assert document["scheduled_at"] == document["created_at"]
    assert sample(metrics, "fc_stream_dispatch_jobs_created_total") == 2
    assert sample(metrics, "fc_stream_events_dead_lettered_total") == 0


def test_the_token_is_saved_only_after_the_batch_jobs_are_written(
    fake: FakeMongo, mongo: MongoStore, tokens: Tokens, metrics: Metrics
) -> None:
    subscribe(fake, "all")
    with Running(mongo, tokens, metrics):
        start = tokens.value
        seen: list[str | None] = []
        fake.when("insert_many", lambda: seen.append(tokens.value), collection="dispatch_jobs")
        fake.fail_next("insert_many", AutoReconnect("connection reset"), times=2, collection="dispatch_jobs")
        events = publish_many(fake, 3)
        wait_until(lambda: job_count(fake) == 3, message="the jobs")
        wait_until(lambda: tokens.value != start, message="the token to move")
        newest_event = fake.cluster_time()
    assert seen == [start, start, start], "the token stayed until the third attempt wrote the jobs"
    assert jobs(fake) == {(e, "all") for e in events}
    assert sample(metrics, "fc_stream_store_errors_total", operation="commit") == 2
    assert sample(metrics, "fc_stream_dispatch_jobs_created_total") == 3
    assert sample(metrics, "fc_stream_duplicate_jobs_suppressed_total") == 0
    checkpoint = tokens.checkpoint()
    assert checkpoint is not None and checkpoint.cluster_time is not None
    assert checkpoint.cluster_time <= newest_event


def test_jobs_that_exist_already_count_as_done(
    fake: FakeMongo, mongo: MongoStore, metrics: Metrics, stepper: Stepper
) -> None:
    ensure_indexes(fake.db)
    subscription = Subscription.model_validate(
        {
            "id": subscribe(fake, "all"),
            "client_id": "acme",
            "name": "subscription all",
            "event_type_pattern": "*:*:*:*",
            "target": "https://hooks.example.com/in",
            "pool_code": "default",
        }
    )
    new, replayed, legacy = (publish(fake) for _ in range(3))
    now = datetime.now(UTC)
    # A job written by an earlier run, and one written by an older version under another _id.
    for event_id, identifier in ((replayed, job_id(replayed, "all")), (legacy, "legacy-id")):
        parsed = parse_event({"id": event_id, "type": SHIPPED, "client_id": "acme"}, now)
        document = job_document(create_jobs(parsed, [subscription], now)[0])
        fake.db["dispatch_jobs"].insert_one({**document, "_id": identifier, "written_before": True})
    report = stepper.step()
    assert report == CommitReport(jobs_created=1, duplicates=2)
    assert sample(metrics, "fc_stream_duplicate_jobs_suppressed_total") == 2
    assert sample(metrics, "fc_stream_dispatch_jobs_created_total") == 1
    assert job_count(fake) == 3
    assert jobs(fake) == {(new, "all"), (replayed, "all"), (legacy, "all")}
    kept = {d["event_id"] for d in fake.db["dispatch_jobs"].find({"written_before": True})}
    assert kept == {replayed, legacy}, "existing jobs are left as they are"


def test_a_write_error_other_than_a_duplicate_is_retried_until_written(
    fake: FakeMongo, mongo: MongoStore, tokens: Tokens, metrics: Metrics, stepper: Stepper
) -> None:
    subscribe(fake, "a")
    subscribe(fake, "b")
    stepper.step()
    saves = len(tokens.saved)
    event = publish(fake)
    fake.reject_writes("dispatch_jobs", code=121, index=1)  # DocumentValidationFailure for one job
    report = stepper.step()
    assert jobs(fake) == {(event, "a"), (event, "b")}
    assert job_count(fake) == 2
    assert sample(metrics, "fc_stream_store_errors_total", operation="commit") == 1
    # The retry writes the whole batch again: what the failed attempt wrote is a duplicate then.
    assert report.jobs_created + report.duplicates == 2
    assert len(tokens.saved) == saves + 1, "the token was saved once, after the jobs"


# -- restarts and lost history ----------------------------------------------------------


def test_a_restart_whose_token_store_is_empty_resumes_from_the_stores_checkpoint(fake: FakeMongo) -> None:
    subscribe(fake, "all")
    published: list[str] = []
    for run in range(3):
        tokens = Tokens()  # as Redis is after a restart without its data, or when there is none
        metrics = Metrics()
        store = MongoStore(fake.db, tokens)
        with Running(store, tokens, metrics):
            published += [publish(fake), publish(fake)]
            due = len(published)
            wait_until(lambda: job_count(fake) == due, message=f"the jobs of run {run}")  # noqa: B023
        store.close()
        assert sample(metrics, "fc_stream_duplicate_jobs_suppressed_total") == 0, "nothing read twice"
        if run < 2:
            published += [publish(fake), publish(fake)]  # while down
    assert jobs(fake) == {(e, "all") for e in published}, "no gap: the events inserted while down too"
    assert counts(fake, "event_type_counts")[SHIPPED]["count"] == len(published)
    saved = fake.db["stream_checkpoints"].find_one({"_id": "stream-processor"})
    assert saved is not None and Checkpoint.loads(saved["checkpoint"]) is not None


class UnreachableMirror(Tokens):
    def fence(self, epoch: int, holder: str) -> None:
        raise StoreUnavailable("redis: connection refused")


def test_a_leader_claims_the_store_with_its_mirror_unreachable_and_an_idle_start_is_kept(
    fake: FakeMongo,
) -> None:
    subscribe(fake, "all")
    unreachable = UnreachableMirror()
    store = MongoStore(fake.db, unreachable)
    store.fence(1, "a 1")  # the mirror's refusal to answer is logged, not waited for
    with Running(store, unreachable, Metrics()):
        pass  # idle: its first batch is empty, and its position the current point
    store.close()
    while_down = publish(fake)
    tokens = Tokens()  # and Redis lost its data
    second = MongoStore(fake.db, tokens)
    second.fence(2, "b 2")
    with Running(second, tokens, Metrics()):
        wait_until(lambda: job_count(fake) == 1, message="the event inserted while down")
    second.close()
    assert jobs(fake) == {(while_down, "all")}


@pytest.mark.parametrize("reported_on", ["watch", "try_next"])
def test_lost_history_is_caught_up_from_the_events_collection(
    reported_on: str, tokens: Tokens, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeMongo(lost_history_on="watch" if reported_on == "watch" else "try_next")
    subscribe(fake, "all")
    first = MongoStore(fake.db, tokens)
    with Running(first, tokens, Metrics()):
        processed = publish(fake)
        invalid = publish(fake, client_id=None)
        wait_until(lambda: job_count(fake) == 1 and fake.db["dead_letters"].count_documents({}) == 1)
    first.close()
    old = tokens.checkpoint()
    assert old is not None and old.cluster_time is not None
    while_down = [publish(fake) for _ in range(3)]
    down_until = fake.cluster_time()
    fake.truncate_oplog()  # all but the newest entry: the saved token is gone

    metrics = Metrics()
    second = MongoStore(fake.db, tokens)
    with caplog.at_level(logging.WARNING, logger="processor.stores.mongo"), Running(second, tokens, metrics):
        wait_until(lambda: job_count(fake) == 4, message="the events inserted while down")
        after = publish(fake)
        wait_until(lambda: job_count(fake) == 5, message="the stream to be followed again")
    second.close()

    assert jobs(fake) == {(e, "all") for e in [processed, *while_down, after]}
    assert sample(metrics, "fc_stream_lost_history_recoveries_total") == 1
    assert fake.db["dead_letters"].count_documents({}) == 1, "the catch-up re-read it, and kept one"
    assert fake.db["dead_letters"].find_one({"event_id": invalid}) is not None
    assert counts(fake, "event_type_counts")[SHIPPED]["count"] == 5, "counted once each"
    warnings = [r.getMessage() for r in caplog.records if "catching up" in r.getMessage()]
    assert len(warnings) == 1
    low = old.cluster_time.as_datetime() - CATCH_UP_SKEW
    high = down_until.as_datetime() + CATCH_UP_SKEW + timedelta(seconds=1)
    assert low.isoformat() in warnings[0] and high.isoformat() in warnings[0], warnings[0]
    saved = tokens.checkpoint()
    assert saved is not None and saved.resume_token != old.resume_token, "following the new stream"


def test_lost_history_without_a_position_starts_from_the_current_point(
    fake: FakeMongo, caplog: pytest.LogCaptureFixture
) -> None:
    subscribe(fake, "all")
    publish(fake)
    lost = fake.newest_token()
    unrecoverable = [publish(fake), publish(fake)]
    fake.db["elsewhere"].insert_one({"_id": 1})
    fake.truncate_oplog()
    tokens = Tokens(Checkpoint(lost, None).dumps())  # as saved before positions were kept
    metrics = Metrics()
    store = MongoStore(fake.db, tokens)
    with caplog.at_level(logging.WARNING, logger="processor.stores.mongo"), Running(store, tokens, metrics):
        later = publish(fake)
        wait_until(lambda: job_count(fake) == 1, message="a job for the event after the start")
    store.close()
    assert jobs(fake) == {(later, "all")}
    assert not {e for e, _ in jobs(fake)} & set(unrecoverable)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "no position was kept" in errors[0].getMessage()
    assert "starting from the current point" in errors[0].getMessage()
    assert sample(metrics, "fc_stream_lost_history_recoveries_total") == 1


def test_a_catch_up_interrupted_by_a_network_error_goes_on_where_it_stopped(
    fake: FakeMongo, tokens: Tokens
) -> None:
    subscribe(fake, "all")
    first = MongoStore(fake.db, tokens)
    with Running(first, tokens, Metrics()):
        processed = publish(fake)
        wait_until(lambda: job_count(fake) == 1)
    first.close()
    while_down = [publish(fake) for _ in range(7)]
    fake.db["elsewhere"].insert_one({"_id": 1})
    fake.truncate_oplog()
    metrics = Metrics()
    store = MongoStore(fake.db, tokens)
    stepper = Stepper(store, metrics, tokens.value)
    fake.fail_next("cursor_next", AutoReconnect("connection reset"), after=3, collection="events")
    for _ in range(8):
        stepper.step(max_events=2)
    stepper.close()
    assert jobs(fake) == {(e, "all") for e in [processed, *while_down]}
    assert sample(metrics, "fc_stream_store_errors_total", operation="read") == 1
    assert sample(metrics, "fc_stream_lost_history_recoveries_total") == 1


# -- network errors ----------------------------------------------------------------------


def test_an_error_in_the_middle_of_a_batch_loses_nothing(
    fake: FakeMongo, metrics: Metrics, stepper: Stepper
) -> None:
    subscribe(fake, "all")
    events = publish_many(fake, 4)
    # Two changes come back, then the connection drops: they must not be lost with it.
    fake.fail_next("try_next", AutoReconnect("connection reset"), after=2, collection="events")
    stepper.step()
    stepper.step()
    assert jobs(fake) == {(e, "all") for e in events}
    assert sample(metrics, "fc_stream_events_processed_total") == 4
    assert sample(metrics, "fc_stream_duplicate_jobs_suppressed_total") == 0


def test_an_idle_stream_keeps_its_token_fresh(
    fake: FakeMongo, mongo: MongoStore, tokens: Tokens, metrics: Metrics
) -> None:
    with Running(mongo, tokens, metrics):
        for n in range(3):
            fake.db["elsewhere"].insert_one({"_id": n})  # other writes move the oplog

        def fresh() -> bool:
            checkpoint = tokens.checkpoint()
            return checkpoint is not None and checkpoint.resume_token == fake.newest_token()

        wait_until(fresh, message="the saved token to reach the newest oplog entry")
    assert sample(metrics, "fc_stream_events_processed_total") == 0


# -- subscriptions -------------------------------------------------------------------------


def test_two_updates_read_together_each_apply_from_their_own_point(
    fake: FakeMongo, mongo: MongoStore, metrics: Metrics
) -> None:
    subscribe(fake, "sub", "orders:*:*:*")
    stepper = Stepper(mongo, metrics)
    stepper.step()
    fake.db["subscriptions"].update_one({"_id": "sub"}, {"$set": {"event_type_pattern": "billing:*:*:*"}})
    between = publish(fake, BILLED)
    fake.db["subscriptions"].update_one({"_id": "sub"}, {"$set": {"active": False}})
    after = publish(fake, BILLED)
    stepper.step()
    stepper.close()
    assert jobs(fake) == {(between, "sub")}
    assert after not in {e for e, _ in jobs(fake)}


def test_a_dropped_subscriptions_collection_is_reloaded(fake: FakeMongo, stepper: Stepper) -> None:
    subscribe(fake, "old")
    before = publish(fake)
    stepper.step()
    fake.db["subscriptions"].drop()
    subscribe(fake, "new")
    after = publish(fake)
    stepper.step()
    assert jobs(fake) == {(before, "old"), (after, "new")}


def test_subscription_changes_read_before_an_error_are_kept(fake: FakeMongo, stepper: Stepper) -> None:
    subscribe(fake, "a")
    subscribe(fake, "b")
    event = publish(fake)
    fake.fail_next("try_next", AutoReconnect("connection reset"), after=1, collection="subscriptions")
    stepper.step()
    assert jobs(fake) == {(event, "a"), (event, "b")}


def test_subscriptions_are_loaded_even_when_the_first_load_fails(
    fake: FakeMongo, mongo: MongoStore, metrics: Metrics
) -> None:
    subscribe(fake, "all")
    fake.fail_next("find", AutoReconnect("connection reset"), collection="subscriptions")
    stepper = Stepper(mongo, metrics)
    stepper.step()
    event = publish(fake)
    stepper.step()
    stepper.close()
    assert sample(metrics, "fc_stream_store_errors_total", operation="load subscriptions") == 1
    assert jobs(fake) == {(event, "all")}


# -- projections and dead letters ------------------------------------------------------------


def _batch(token: str | None) -> ProcessedBatch:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    subscription = Subscription.model_validate(
        {
            "id": "sub",
            "client_id": "acme",
            "name": "subscription",
            "event_type_pattern": "*:*:*:*",
            "target": "https://hooks.example.com/in",
            "pool_code": "default",
        }
    )
    events = [
        parse_event(
            {"id": f"evt-{n}", "type": SHIPPED if n < 2 else BILLED, "client_id": "acme"},
            now + timedelta(seconds=n),
        )
        for n in range(3)
    ]
    jobs = [job for e in events for job in create_jobs(e, [subscription], now)]
    return counted_batch(events, jobs, token)


def counted_batch(events: list[Event], jobs: list[DispatchJob], token: str | None) -> ProcessedBatch:
    """A batch as the loop commits it once the feed has caught up: with its tally."""
    return ProcessedBatch(jobs, [], token, tally=Tally([event_key(0, e) for e in events], jobs, token))


def test_projections_and_their_marks_are_written_together_or_not_at_all(
    fake: FakeMongo, mongo: MongoStore
) -> None:
    batch = _batch(None)
    conflict = OperationFailure("Write conflict during plan execution", 112, {"codeName": "WriteConflict"})
    fake.fail_next("bulk_write", conflict, collection="client_activity")
    with pytest.raises(StoreUnavailable):
        mongo.commit(batch)
    assert fake.db["projection_marks"].count_documents({}) == 0, "the transaction was rolled back"
    assert fake.db["event_type_counts"].count_documents({}) == 0
    mongo.commit(batch)  # the loop's retry
    assert {t: d["count"] for t, d in counts(fake, "event_type_counts").items()} == {SHIPPED: 2, BILLED: 1}
    activity = counts(fake, "client_activity")["acme"]
    assert (activity["events"], activity["jobs"]) == (3, 3)


def test_batches_are_bounded_by_bytes_and_an_event_over_the_cap_is_dead_lettered_unsent(
    fake: FakeMongo, tokens: Tokens, metrics: Metrics
) -> None:
    store = MongoStore(fake.db, tokens, max_event_bytes=100_000)
    stepper = Stepper(store, metrics)
    stepper.step()
    subscribe(fake, "all")
    small = [publish(fake, data={"text": "s" * 2_000}) for _ in range(3)]
    large = publish(fake, data={"text": "l" * 200_000})
    after = publish(fake)
    first = stepper.processor.retry("read", stepper.feed.next_batch, 50, FAST.max_wait, 3_000)
    assert [entry.event_id for entry in first.entries] == small[:2] and first.more, "cut by bytes"
    stepper.processor.process(first)
    for _ in range(3):
        stepper.step()
    assert jobs(fake) == {(event, "all") for event in [*small, after]}
    (letter,) = fake.db["dead_letters"].find()
    assert letter["event_id"] == large and "over the limit of 100000" in letter["reason"]
    stored = fake.db["events"].find_one({"_id": ObjectId(large)})
    assert stored is not None
    size = len(bson.encode(stored))
    assert f"is {size} bytes as BSON" in letter["reason"], "the server measured it"
    assert json_util.loads(letter["raw"]) == {"_id": ObjectId(large)}, "it sent the key, not the document"
    stepper.close()
    store.close()
