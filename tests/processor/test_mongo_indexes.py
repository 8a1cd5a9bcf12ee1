"""The index initializer on the fake database: what it creates, what it accepts,
and what it refuses with a message an operator can act on."""

from __future__ import annotations

import pytest
from pymongo.errors import OperationFailure

from processor.stores.base import StoreMisconfigured, StoreUnavailable
from processor.stores.mongo import INDEXES, MARKS_KEPT_SECONDS, ensure_indexes
from tests.fake_mongo import Document, FakeMongo

JOBS_UNIQUE = "dispatch_jobs_event_subscription"
JOB_KEYS = [("event_id", 1), ("subscription_id", 1)]


@pytest.fixture
def fake() -> FakeMongo:
    return FakeMongo()


def indexes(fake: FakeMongo, collection: str) -> dict[str, Document]:
    return {index["name"]: dict(index) for index in fake.db[collection].list_indexes()}


def test_a_fresh_database_gets_every_index(fake: FakeMongo) -> None:
    created = ensure_indexes(fake.db)
    assert created == [spec.name for spec in INDEXES]
    for spec in INDEXES:
        index = indexes(fake, spec.collection)[spec.name]
        assert tuple(index["key"].items()) == spec.keys
        assert bool(index.get("unique")) == spec.unique
        assert index.get("expireAfterSeconds") == spec.expire_after_seconds
    assert indexes(fake, "dispatch_jobs")[JOBS_UNIQUE]["unique"] is True
    assert (
        indexes(fake, "projection_marks")["projection_marks_ttl"]["expireAfterSeconds"] == MARKS_KEPT_SECONDS
    )


def test_a_second_run_creates_nothing(fake: FakeMongo) -> None:
    ensure_indexes(fake.db)
    calls = fake.calls["create_index"]
    before = {spec.collection: indexes(fake, spec.collection) for spec in INDEXES}
    assert ensure_indexes(fake.db) == []
    assert fake.calls["create_index"] == calls
    assert {spec.collection: indexes(fake, spec.collection) for spec in INDEXES} == before


def test_an_index_with_the_same_keys_under_another_name_is_accepted(fake: FakeMongo) -> None:
    fake.db["dispatch_jobs"].create_index(JOB_KEYS, name="legacy_jobs_unique", unique=True)
    # As the shell creates it: key values are doubles.
    fake.database["events"].create_index([("type", 1.0)], name="type_1")
    created = ensure_indexes(fake.db)
    assert JOBS_UNIQUE not in created and "events_type" not in created
    assert set(indexes(fake, "dispatch_jobs")) == {
        "_id_",
        "legacy_jobs_unique",
        "dispatch_jobs_status",
        "dispatch_jobs_client",
    }
    assert "events_type" not in indexes(fake, "events")


def test_a_non_unique_jobs_index_is_refused_with_what_to_do(fake: FakeMongo) -> None:
    fake.db["dispatch_jobs"].create_index(JOB_KEYS, name="jobs_by_pair")
    with pytest.raises(StoreMisconfigured) as refused:
        ensure_indexes(fake.db)
    message = str(refused.value)
    assert "dispatch_jobs" in message and "'jobs_by_pair'" in message
    assert "(event_id, subscription_id)" in message and "not unique" in message
    assert "drop it" in message
    assert JOBS_UNIQUE not in indexes(fake, "dispatch_jobs")


def test_an_index_options_conflict_is_refused(fake: FakeMongo) -> None:
    conflict = OperationFailure(
        "Index already exists with a different name: something_else",
        85,
        {"ok": 0.0, "code": 85, "codeName": "IndexOptionsConflict"},
    )
    fake.fail_next("create_index", conflict, collection="dispatch_jobs")
    with pytest.raises(StoreMisconfigured) as refused:
        ensure_indexes(fake.db)
    message = str(refused.value)
    assert "dispatch_jobs" in message and "cannot create index" in message
    assert "different name" in message, "the server's reason is kept"


def test_an_index_of_the_same_name_on_other_keys_is_refused(fake: FakeMongo) -> None:
    fake.db["events"].create_index([("type", -1)], name="events_type")  # code 86 on the spec's index
    with pytest.raises(StoreMisconfigured) as refused:
        ensure_indexes(fake.db)
    message = str(refused.value)
    assert "events" in message and "'events_type'" in message and "(type)" in message


def test_duplicate_jobs_prevent_the_unique_index_and_say_so(fake: FakeMongo) -> None:
    jobs = fake.db["dispatch_jobs"]
    jobs.insert_one({"_id": "one", "event_id": "evt-1", "subscription_id": "sub"})
    jobs.insert_one({"_id": "two", "event_id": "evt-1", "subscription_id": "sub"})
    with pytest.raises(StoreMisconfigured) as refused:
        ensure_indexes(fake.db)
    message = str(refused.value)
    assert "dispatch_jobs" in message and "duplicates already exist" in message
    assert "(event_id, subscription_id)" in message
    assert JOBS_UNIQUE not in indexes(fake, "dispatch_jobs")


def test_other_server_errors_are_left_to_the_retry(fake: FakeMongo) -> None:
    fake.fail_next("create_index", OperationFailure("not authorized", 13, {"codeName": "Unauthorized"}))
    with pytest.raises(StoreUnavailable, match="not authorized") as failed:
        ensure_indexes(fake.db)
    assert isinstance(failed.value.__cause__, OperationFailure) and failed.value.__cause__.code == 13
    assert ensure_indexes(fake.db) == [spec.name for spec in INDEXES], "the next run does the work"


def test_an_index_the_server_cannot_create_is_refused_with_its_reason_not_retried(fake: FakeMongo) -> None:
    refusal = OperationFailure(
        "add index fails, too many indexes for flowcatalyst.events key:{ type: 1 }",
        67,
        {
            "ok": 0.0,
            "code": 67,
            "codeName": "CannotCreateIndex",
            "errmsg": "add index fails, too many indexes",
        },
    )
    fake.fail_next("create_index", refusal, collection="events")
    with pytest.raises(StoreMisconfigured) as refused:
        ensure_indexes(fake.db)
    message = str(refused.value)
    assert "events" in message and "'events_type'" in message and "too many indexes" in message
    assert "shard" not in message, "the shard key advice is for a shard key refusal only"
