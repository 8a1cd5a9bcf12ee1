"""A start on MongoDB, at the wire, through the runner's own ``open_store``: a
deployment the processor cannot serve correctly (a jobs collection sharded on
a key its unique index cannot begin with, a standalone server) is refused at
once with one line saying what to do, never retried as if the server were
down; and what the projection transaction writes to exists before it runs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from pymongo.database import Database
from pymongo.errors import OperationFailure

from processor.config import Config
from processor.jobs import create_jobs
from processor.metrics import Metrics
from processor.models import Subscription, parse_event
from processor.projections import Tally, event_key
from processor.runner import Runner, open_store, process
from processor.stores.base import ProcessedBatch, StoreMisconfigured
from processor.stores.mongo import MongoStore, require_replica_set
from tests.fake_mongo import Document
from tests.processor.harness import wait_until
from tests.processor.wire_documents import event, subscription
from tests.wire_mongo import WireMongo

JOBS_UNIQUE = "dispatch_jobs_event_subscription"
# What the projection transaction writes to (the checkpoint, the marks, the read models).
TRANSACTION_COLLECTIONS = {
    "stream_checkpoints",
    "projection_marks",
    "event_type_counts",
    "subscription_stats",
    "client_activity",
}
WRITES = ("insert", "update", "delete")


@pytest.fixture
def wire() -> Iterator[WireMongo]:
    with WireMongo() as server:
        yield server
        server.check()


def configuration(wire: WireMongo) -> Config:
    return Config(mongo_url=wire.uri, mongo_db=wire.engine.name, metrics_port=0)


@contextmanager
def started(wire: WireMongo) -> Iterator[tuple[MongoStore, Callable[[], object]]]:
    """The store and the start-up step, as ``open_store`` makes them for ``FC_MONGO_URL``."""
    store, prepare = open_store(configuration(wire), Metrics())
    assert isinstance(store, MongoStore) and prepare is not None
    try:
        yield store, prepare
    finally:
        store.close()
        store.database.client.close()


def one_line(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message, message
    return message


# -- a sharded jobs collection -----------------------------------------------------------


def test_a_jobs_collection_sharded_on_a_key_the_unique_index_cannot_begin_with_is_refused_with_one_line(
    wire: WireMongo,
) -> None:
    wire.shard("dispatch_jobs", {"client_id": 1})
    with started(wire) as (_, prepare), pytest.raises(StoreMisconfigured) as refused:
        prepare()
    message = one_line(refused.value)
    assert "dispatch_jobs" in message and repr(JOBS_UNIQUE) in message
    assert "(event_id, subscription_id)" in message
    assert "prefix" in message and "{event_id: 1}" in message, "it says which shard key would do"
    assert "client_id" in message, "the server's reason, with the shard key it found, is kept"


def test_a_jobs_collection_sharded_on_event_id_gets_every_index(wire: WireMongo) -> None:
    wire.shard("dispatch_jobs", {"event_id": 1})  # the key the refusal recommends
    with started(wire) as (store, prepare):
        prepare()
        unique = [i for i in store.database["dispatch_jobs"].list_indexes() if i["name"] == JOBS_UNIQUE]
    assert len(unique) == 1 and unique[0]["unique"] is True


def test_a_start_on_such_a_sharded_cluster_exits_3_instead_of_retrying(
    wire: WireMongo, caplog: pytest.LogCaptureFixture
) -> None:
    wire.shard("dispatch_jobs", {"subscription_id": 1})
    attempts: list[str] = []
    wire.when(
        lambda command, body: attempts.extend(
            i["name"]
            for i in body.get("indexes", [])
            if command == "createIndexes" and i["name"] == JOBS_UNIQUE
        )
    )
    runner = Runner(configuration(wire))
    assert isinstance(runner.store, MongoStore)
    outcome: list[int] = []
    worker = threading.Thread(target=lambda: outcome.append(process(runner.processor, None, runner.prepare)))
    with caplog.at_level(logging.ERROR, logger="processor"):
        worker.start()
        try:
            wait_until(lambda: not worker.is_alive(), timeout=20, message="the start to give up")
        finally:
            runner.processor.stop()  # ends a start that retries, so that a failure does not hang
            worker.join()
            runner.store.close()
            runner.store.database.client.close()
    assert outcome == [3], "a restart cannot help: the operator must act"
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cannot start:")]
    assert len(refusals) == 1 and "dispatch_jobs" in refusals[0] and "\n" not in refusals[0]
    assert attempts == [JOBS_UNIQUE], "tried once, not again and again"


# -- a standalone server -----------------------------------------------------------------


@pytest.fixture
def standalone() -> Iterator[WireMongo]:
    with WireMongo(standalone=True) as server:
        yield server
        server.check()


def test_the_standalone_wire_server_answers_as_a_standalone_mongod(standalone: WireMongo) -> None:
    with standalone.client() as client:
        hello = client.admin.command("hello")
        assert "setName" not in hello and hello.get("msg") != "isdbgrid"
        assert "operationTime" not in client.admin.command("ping")
        with pytest.raises(OperationFailure) as refused:
            client[standalone.engine.name]["events"].watch()
    assert refused.value.code == 40573


def test_a_standalone_server_is_refused_at_start_with_one_line_naming_fc_mongo_url(
    standalone: WireMongo,
) -> None:
    with started(standalone) as (_, prepare), pytest.raises(StoreMisconfigured) as refused:
        prepare()
    message = one_line(refused.value)
    assert "FC_MONGO_URL" in message and "standalone" in message and "replica set" in message
    assert standalone.commands["createIndexes"] == 0, "refused before anything is created"


def test_a_mongos_passes_the_replica_set_check() -> None:
    class Admin:
        def command(self, name: str) -> Document:
            assert name == "hello"
            return {"ok": 1.0, "isWritablePrimary": True, "msg": "isdbgrid", "maxWireVersion": 17}

    class Client:
        admin = Admin()

    class Router:
        client = Client()

    require_replica_set(cast("Database[dict[str, Any]]", Router()))  # no refusal


# -- the collections a transaction writes to ----------------------------------------------


def _batch() -> ProcessedBatch:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    stored = subscription("sub")
    subscribed = Subscription.model_validate({**stored, "id": stored.pop("_id")})
    events = [parse_event({**event(), "id": f"evt-{n}"}, now) for n in range(2)]
    jobs = [job for e in events for job in create_jobs(e, [subscribed], now + timedelta(seconds=1))]
    return ProcessedBatch(jobs, [], None, tally=Tally([event_key(n, e) for n, e in enumerate(events)], jobs))


def test_every_collection_a_transaction_writes_to_is_created_before_the_first_transaction(
    wire: WireMongo,
) -> None:
    created: set[str] = set()
    implicit: list[str] = []
    committed: list[str] = []

    def watch(command: str, body: Document) -> None:
        if command in ("create", "createIndexes"):
            created.add(body[command])
        elif command in WRITES and body.get("autocommit") is False and body[command] not in created:
            implicit.append(body[command])  # a transaction would create it
        elif command == "commitTransaction":
            committed.append(command)

    wire.when(watch)
    with started(wire) as (store, prepare):
        prepare()
        store.fence(1, "a 1")
        store.commit(_batch())
    assert committed, "the transactions ran"
    assert implicit == []
    assert created >= TRANSACTION_COLLECTIONS


def test_creating_the_collections_again_creates_nothing_and_one_created_meanwhile_is_fine(
    wire: WireMongo,
) -> None:
    def another_start_first(command: str, body: Document) -> None:
        if command == "create" and body["create"] == "client_activity":
            wire.engine.collection_data("client_activity")  # between this start's listing and its create

    wire.when(another_start_first)
    with started(wire) as (store, prepare):
        prepare()
        creates = wire.commands["create"]
        assert creates >= 1
        prepare()
        assert wire.commands["create"] == creates, "what exists is left as it is"
        assert set(store.database.list_collection_names()) >= TRANSACTION_COLLECTIONS
