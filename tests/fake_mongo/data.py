"""A collection as stored: its documents and indexes, and the duplicate-key check
every write makes against them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.fake_mongo.indexes import Index, duplicate_key_error, hashable
from tests.fake_mongo.query import MISSING, Document


@dataclass
class Data:
    """A collection's documents, by ``_id``, in insertion order, and its indexes."""

    documents: dict[Any, Document] = field(default_factory=dict)
    indexes: dict[str, Index] = field(default_factory=lambda: {"_id_": Index("_id_", (("_id", 1),))})
    # changeStreamPreAndPostImages: each write keeps the document before and after it, for change streams.
    pre_and_post_images: bool = False

    def conflict(
        self, document: Mapping[str, Any], collection: str, ignore: Any = MISSING
    ) -> Document | None:
        """The duplicate-key error ``document`` would cause, if any."""
        key = hashable(document.get("_id"))
        if key != ignore and key in self.documents:
            return duplicate_key_error(collection, "_id_", {"_id": document.get("_id")})
        for index in self.indexes.values():
            if not index.unique or index.name == "_id_":
                continue
            wanted = index.key_of(document)
            for other_key, other in self.documents.items():
                if other_key != ignore and index.key_of(other) == wanted:
                    fields = {name: document.get(name) for name, _ in index.keys}
                    return duplicate_key_error(collection, index.name, fields)
        return None
