"""Indexes: their keys, their description as listIndexes gives it, and the error a
unique one raises for a duplicate."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bson import ObjectId

from tests.fake_mongo.query import Document

DUPLICATE_KEY = 11000


def duplicate_key_error(collection: str, index: str, key: Mapping[str, Any]) -> Document:
    return {
        "code": DUPLICATE_KEY,
        "errmsg": f"E11000 duplicate key error collection: fake.{collection} index: {index} dup key: {key}",
        "keyPattern": {name: 1 for name in key},
        "keyValue": dict(key),
    }


def hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return (type(value).__name__, value) if isinstance(value, bool | ObjectId) else value


@dataclass
class Index:
    name: str
    keys: tuple[tuple[str, Any], ...]
    unique: bool = False
    expire_after_seconds: int | None = None

    def describe(self) -> Document:
        description: Document = {"v": 2, "key": dict(self.keys), "name": self.name}
        if self.unique:
            description["unique"] = True
        if self.expire_after_seconds is not None:
            description["expireAfterSeconds"] = self.expire_after_seconds
        return description

    def key_of(self, document: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(hashable(document.get(name)) for name, _ in self.keys)
