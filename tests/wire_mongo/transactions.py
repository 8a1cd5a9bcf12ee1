"""Multi-document transactions as mongod runs them: snapshot reads, the
transaction's own writes visible to it, nothing visible to others before the
commit, and a write conflict (``TransientTransactionError``) when another
writer changed a document the transaction wrote."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from tests.fake_mongo import Document, FakeMongo

WRITE_CONFLICT = 112
NO_SUCH_TRANSACTION = 251
TRANSIENT = "TransientTransactionError"


@dataclass
class Transaction:
    """One transaction's view: each collection copied at its first touch (its
    snapshot), the writes made to the copies, and the commands to replay on the
    server at commit."""

    engine: FakeMongo
    view: FakeMongo = field(init=False)
    base: dict[str, dict[Any, Document]] = field(default_factory=dict)
    writes: list[Document] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.view = FakeMongo(self.engine.name)

    def touch(self, collection: str) -> FakeMongo:
        """The view, holding ``collection`` as it stood when the transaction first read or wrote it."""
        if collection not in self.base:
            with self.engine.lock:
                data = copy.deepcopy(self.engine.collection_data(collection))
            self.view.data[collection] = data
            self.base[collection] = copy.deepcopy(data.documents)
        return self.view

    def conflict(self) -> str | None:
        """Under the engine's lock: a document this transaction wrote that another
        writer changed since the transaction's snapshot, described."""
        for collection, base in self.base.items():
            mine = self.view.collection_data(collection).documents
            current = self.engine.collection_data(collection).documents
            for key in mine.keys() | base.keys():
                if mine.get(key) != base.get(key) and current.get(key) != base.get(key):
                    return f"{collection} {key!r}"
        return None
