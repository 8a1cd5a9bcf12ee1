from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from processor.stores.sqlite import SqliteStore
from tests.processor.harness import Publisher


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
