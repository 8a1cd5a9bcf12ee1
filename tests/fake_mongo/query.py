"""How the fake reads documents: filters, projections, and the order of values of
different BSON types, as the server compares and sorts them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from bson import ObjectId
from bson.timestamp import Timestamp

Document = dict[str, Any]


_KIND = {type(None): 0, int: 1, float: 1, str: 2, dict: 3, list: 4, ObjectId: 7, bool: 8, datetime: 9}


def kind(value: Any) -> int:
    if isinstance(value, Timestamp):
        return 10
    return _KIND.get(type(value), 11)


def sort_key(value: Any) -> tuple[int, Any]:
    return (kind(value), value if value is not None and not isinstance(value, dict | list) else 0)


def _compare(a: Any, b: Any, operator: str) -> bool:
    if kind(a) != kind(b) or a is None:  # range queries do not cross BSON types
        return False
    if operator == "$gt":
        return bool(a > b)
    if operator == "$gte":
        return bool(a >= b)
    if operator == "$lt":
        return bool(a < b)
    return bool(a <= b)


MISSING = object()  # a field a document lacks, told apart from one that holds None


def matches(document: Mapping[str, Any], query: Mapping[str, Any] | None) -> bool:
    for name, condition in (query or {}).items():
        value = document.get(name, MISSING)
        if isinstance(condition, Mapping) and condition and all(k.startswith("$") for k in condition):
            for operator, operand in condition.items():
                if operator == "$eq":
                    ok = value == operand
                elif operator == "$in":
                    ok = value in operand
                elif operator in ("$gt", "$gte", "$lt", "$lte"):
                    ok = value is not MISSING and _compare(value, operand, operator)
                else:
                    raise NotImplementedError(f"query operator {operator}")
                if not ok:
                    return False
        elif (None if value is MISSING else value) != condition:
            return False
    return True


def project(document: Document, projection: Mapping[str, Any] | None) -> Document:
    if not projection:
        return document
    included = {name for name, flag in projection.items() if flag}
    if included:
        if projection.get("_id", 1):
            included.add("_id")
        return {name: value for name, value in document.items() if name in included}
    return {name: value for name, value in document.items() if name not in projection}
