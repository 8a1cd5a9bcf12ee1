"""How the fake reads documents: filters, projections, the few aggregation
expressions the store's pipelines use, and the order of values of different
BSON types, as the server compares and sorts them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import bson
from bson import ObjectId
from bson.timestamp import Timestamp

Document = dict[str, Any]


_KIND = {type(None): 0, int: 1, float: 1, str: 2, dict: 3, list: 4, ObjectId: 7, bool: 8, datetime: 9}
_TYPE_NAMES = {"null": 0, "string": 2, "object": 3, "array": 4, "objectId": 7, "bool": 8, "date": 9}


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
            if not _satisfies(value, condition):
                return False
        elif (None if value is MISSING else value) != condition:
            return False
    return True


def _satisfies(value: Any, condition: Mapping[str, Any]) -> bool:
    for operator, operand in condition.items():
        if operator == "$eq":
            ok = value == operand
        elif operator == "$in":
            ok = value in operand
        elif operator in ("$gt", "$gte", "$lt", "$lte"):
            ok = value is not MISSING and _compare(value, operand, operator)
        elif operator == "$type":
            ok = value is not MISSING and kind(value) == _TYPE_NAMES[operand]
        elif operator == "$not":
            ok = not _satisfies(value, operand)
        else:
            raise NotImplementedError(f"query operator {operator}")
        if not ok:
            return False
    return True


def project(document: Document, projection: Mapping[str, Any] | None) -> Document:
    """Fields kept or left out, and fields computed by an aggregation expression."""
    if not projection:
        return document
    computed = {name: spec for name, spec in projection.items() if is_expression(spec)}
    flags = {name: spec for name, spec in projection.items() if name not in computed}
    included = {name for name, flag in flags.items() if flag}
    if included or computed:
        if flags.get("_id", 1):
            included.add("_id")
        kept = {name: value for name, value in document.items() if name in included}
        for name, spec in computed.items():
            value = evaluate(spec, document)
            if value is not MISSING:
                kept[name] = value
        return kept
    return {name: value for name, value in document.items() if name not in flags}


# -- aggregation expressions: any other fails the test that meets it, by name --

REMOVE = "$$REMOVE"
_COMPARISONS = {
    "$eq": lambda a, b: a == b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
}


def is_expression(value: Any) -> bool:
    return (isinstance(value, str) and value.startswith("$")) or (
        isinstance(value, Mapping) and len(value) == 1 and next(iter(value)).startswith("$")
    )


def evaluate(expression: Any, document: Document) -> Any:
    """The value of ``expression`` on ``document``; ``MISSING`` for a field that
    is absent or ``$$REMOVE``."""
    if isinstance(expression, str) and expression.startswith("$"):
        if expression == REMOVE:
            return MISSING
        value: Any = document
        for name in expression[1:].split("."):
            value = value.get(name, MISSING) if isinstance(value, Mapping) else MISSING
        return value
    if not isinstance(expression, Mapping) or not is_expression(expression):
        return expression
    ((operator, argument),) = expression.items()
    if operator == "$bsonSize":
        value = evaluate(argument, document)
        return None if value is MISSING or value is None else len(bson.encode(value))
    if operator == "$cond":
        condition, then, otherwise = argument
        return evaluate(then if evaluate(condition, document) else otherwise, document)
    if operator in _COMPARISONS:
        a, b = (_null(evaluate(v, document)) for v in argument)
        if kind(a) != kind(b):  # across types, BSON's order of types decides
            return _COMPARISONS[operator](sort_key(a)[0], sort_key(b)[0])
        return bool(_COMPARISONS[operator](a, b))
    raise NotImplementedError(f"aggregation expression {operator}")


def _null(value: Any) -> Any:
    return None if value is MISSING else value
