"""The MongoDB store against a real replica set (change streams and transactions
need one): set FC_TEST_MONGO_URL, e.g. mongodb://localhost:27017/?replicaSet=rs0.
Each test works in a database of its own, dropped afterwards. What only a real
server shows of this store is here (lost history, indexes); the contract suite
(tests/stores/test_contract.py) runs on the same replica set when it is set."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.database import Database

from processor.metrics import Metrics
from processor.stores.mongo import INDEXES, Checkpoint, MongoStore, ensure_indexes
from tests.fake_mongo import Document, Running, Tokens, sample
from tests.processor.harness import wait_until
from tests.processor.wire_documents import subscription

URL = os.environ.get("FC_TEST_MONGO_URL")
pytestmark = pytest.mark.skipif(
    not URL, reason="FC_TEST_MONGO_URL is not set: no MongoDB replica set to test against"
)

SHIPPED = "orders:fulfillment:shipment:shipped"


@pytest.fixture(scope="module")
def client() -> Iterator[MongoClient[Document]]:
    assert URL is not None
    client: MongoClient[Document] = MongoClient(URL, tz_aware=True, serverSelectionTimeoutMS=10_000)
    yield client
    client.close()


@pytest.fixture
def fresh(client: MongoClient[Document]) -> Iterator[Database[Document]]:
    name = f"fc_test_{uuid.uuid4().hex[:16]}"
    yield client[name]
    client.drop_database(name)


@pytest.fixture
def db(fresh: Database[Document]) -> Database[Document]:
    ensure_indexes(fresh)
    return fresh


def subscribe(db: Database[Document], id: str, pattern: str = "*:*:*:*") -> str:
    db["subscriptions"].insert_one(subscription(id, pattern))
    return id


def publish(db: Database[Document], **fields: Any) -> str:
    document: Document = {"_id": ObjectId(), "type": SHIPPED, "client_id": "acme", **fields}
    db["events"].insert_one(document)
    return str(document["_id"])


def jobs(db: Database[Document]) -> set[tuple[str, str]]:
    return {(d["event_id"], d["subscription_id"]) for d in db["dispatch_jobs"].find()}


def job_count(db: Database[Document]) -> int:
    return db["dispatch_jobs"].count_documents({})


def ancient(token: Document) -> Document:
    """``token`` with its cluster time rewritten to 1970, long gone from any oplog.

    This relies on the resume token format (the ``_data`` hex string, since 4.2):
    the type byte ``82`` and then the 8-byte big-endian cluster time (seconds,
    increment), the rest unchanged.
    """
    data = str(token["_data"])
    assert data[:2] == "82", f"unknown resume token format: {data}"
    return {**token, "_data": data[:2] + f"{1:08X}{1:08X}" + data[18:]}


def test_lost_history_is_caught_up_from_the_events_collection(
    db: Database[Document], caplog: pytest.LogCaptureFixture
) -> None:
    subscribe(db, "all")
    tokens = Tokens()
    first = MongoStore(db, tokens)
    with Running(first, tokens, Metrics()):
        processed = publish(db)
        wait_until(lambda: job_count(db) == 1, timeout=30)
    first.close()
    saved = tokens.checkpoint()
    assert saved is not None and saved.resume_token is not None and saved.cluster_time is not None
    tokens.value = Checkpoint(ancient(saved.resume_token), saved.cluster_time).dumps()
    while_down = [publish(db), publish(db)]
    metrics = Metrics()
    second = MongoStore(db, tokens)
    with caplog.at_level(logging.WARNING, logger="processor.stores.mongo"), Running(second, tokens, metrics):
        wait_until(lambda: job_count(db) == 3, timeout=30, message="the catch-up")
        after = publish(db)
        wait_until(lambda: job_count(db) == 4, timeout=30, message="the new stream")
    second.close()
    assert jobs(db) == {(e, "all") for e in [processed, *while_down, after]}
    assert sample(metrics, "fc_stream_lost_history_recoveries_total") == 1
    assert any("catching up" in r.getMessage() for r in caplog.records)


def test_indexes_are_created_once_on_a_fresh_database(fresh: Database[Document]) -> None:
    assert ensure_indexes(fresh) == [spec.name for spec in INDEXES]
    assert ensure_indexes(fresh) == []
    for spec in INDEXES:
        information = fresh[spec.collection].index_information()
        assert spec.name in information
        assert tuple(information[spec.name]["key"]) == spec.keys
        assert bool(information[spec.name].get("unique")) == spec.unique
