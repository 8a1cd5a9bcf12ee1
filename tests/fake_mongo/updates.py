"""How the fake changes documents: the update operators the store uses."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from tests.fake_mongo.query import Document, kind


def _larger(current: Any, candidate: Any) -> bool:
    if current is None:
        return True
    if kind(current) != kind(candidate):
        return kind(candidate) > kind(current)
    return bool(candidate > current)


def apply_update(document: Document, update: Mapping[str, Any], inserting: bool) -> Document:
    result = copy.deepcopy(document)
    for operator, fields in update.items():
        for name, value in fields.items():
            if operator == "$set" or (operator == "$setOnInsert" and inserting):
                result[name] = copy.deepcopy(value)
            elif operator == "$setOnInsert":
                continue
            elif operator == "$inc":
                result[name] = result.get(name, 0) + value
            elif operator == "$max":
                if name not in result or _larger(result[name], value):
                    result[name] = value
            else:
                raise NotImplementedError(f"update operator {operator}")
    return result
