from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo.database import Database

from processor.metrics import Metrics
from processor.stores.sqlite import SqliteStore
from tests.fake_mongo import Document, Tokens
from tests.processor.harness import Publisher
from tests.wire_mongo import WireMongo


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def store(db: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(db)
    yield store
    store.close()


@pytest.fixture
def publisher(db: Path) -> Publisher:
    return Publisher(db)


@pytest.fixture
def wire() -> Iterator[WireMongo]:
    """A MongoDB server at the wire; the test fails if it met a command it does not model."""
    with WireMongo() as server:
        yield server
    server.check()


@pytest.fixture
def database(wire: WireMongo) -> Iterator[Database[Document]]:
    """The wire server's database, through pymongo's real client."""
    with wire.client() as client:
        yield client[wire.engine.name]


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def tokens() -> Tokens:
    """The MongoDB store's token mirror, in memory, keeping every token saved."""
    return Tokens()
