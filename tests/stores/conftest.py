"""The one fixture of the contract suite: ``backend``, each store in turn, on
data of its own. A new store joins the suite here."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient

from tests.fake_mongo import Document, FakeMongo
from tests.stores.backends import (
    MONGO_DEFECTS,
    SQLITE_DEFECTS,
    Backend,
    MongoBackend,
    SqliteBackend,
    unconfirmed,
)
from tests.wire_mongo import WireMongo

REPLICA_SET_URL = os.environ.get("FC_TEST_MONGO_URL")
NO_REPLICA_SET = "FC_TEST_MONGO_URL is not set: no MongoDB replica set to test against"


@pytest.fixture(
    params=[
        "sqlite",
        "mongo-double",
        "mongo-wire",
        pytest.param(
            "mongo-replica-set", marks=pytest.mark.skipif(not REPLICA_SET_URL, reason=NO_REPLICA_SET)
        ),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The embedded store on a new file; the MongoDB store on a new test double,
    and through pymongo's real client on a new wire server; the MongoDB store
    on a real replica set (``FC_TEST_MONGO_URL``), in a
    database of its own, dropped afterwards."""
    driver: Backend
    if request.param == "sqlite":
        driver = SqliteBackend(tmp_path / "store.db", SQLITE_DEFECTS)
        yield driver
        driver.close()
    elif request.param == "mongo-double":
        driver = MongoBackend("mongo-double", FakeMongo().db, MONGO_DEFECTS)
        yield driver
        driver.close()
    elif request.param == "mongo-wire":
        with WireMongo() as wire, wire.client() as wired:
            driver = MongoBackend("mongo-wire", wired[wire.engine.name], MONGO_DEFECTS)
            yield driver
            driver.close()
        wire.check()
    else:
        assert REPLICA_SET_URL is not None
        client: MongoClient[Document] = MongoClient(
            REPLICA_SET_URL, tz_aware=True, serverSelectionTimeoutMS=10_000
        )
        name = f"fc_contract_{uuid.uuid4().hex[:16]}"
        try:
            driver = MongoBackend("mongo-replica-set", client[name], unconfirmed(MONGO_DEFECTS))
            yield driver
            driver.close()
        finally:
            client.drop_database(name)
            client.close()
