"""Subscription filters on an event's payload: JSONPath (RFC 9535) conditions.

Paths are compiled once, when a subscription is validated, by jsonpath-rfc9535.
Values are compared as JSON values, not as Python objects: ``1`` equals ``1.0``
but ``true`` does not equal ``1``, and ordering across types is simply false.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jsonpath_rfc9535
from jsonpath_rfc9535 import JSONPathQuery

MAX_EXPRESSION_LENGTH = 512

Operator = Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "exists"]
OPERATORS: tuple[Operator, ...] = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "exists")


def compile_path(expression: str) -> JSONPathQuery:
    """Compile a JSONPath query, or raise ``ValueError`` saying what is wrong with it."""
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ValueError(f"is {len(expression)} characters long; at most {MAX_EXPRESSION_LENGTH} are allowed")
    try:
        return jsonpath_rfc9535.compile(expression)
    except jsonpath_rfc9535.JSONPathError as error:
        raise ValueError(f"is not a valid RFC 9535 JSONPath query: {error}") from None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def json_equal(left: object, right: object) -> bool:
    """Equality of JSON values: numbers by value, booleans only with booleans."""
    if _is_number(left) and _is_number(right):
        return left == right
    if isinstance(left, bool) or isinstance(right, bool):
        return left is right
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(json_equal, left, right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(v, right[k]) for k, v in left.items())
    return type(left) is type(right) and left == right


def _ordered(compare: Callable[[Any, Any], bool]) -> Callable[[object, object], bool]:
    """Numbers compare with numbers, strings with strings; anything else is false."""

    def test(node: object, value: object) -> bool:
        if _is_number(node) and _is_number(value):
            return compare(node, value)
        if isinstance(node, str) and isinstance(value, str):
            return compare(node, value)
        return False

    return test


def _member(node: object, values: object) -> bool:
    return isinstance(values, list) and any(json_equal(node, v) for v in values)


TESTS: dict[Operator, Callable[[object, object], bool]] = {
    "eq": json_equal,
    "ne": lambda node, value: not json_equal(node, value),
    "gt": _ordered(lambda a, b: a > b),
    "gte": _ordered(lambda a, b: a >= b),
    "lt": _ordered(lambda a, b: a < b),
    "lte": _ordered(lambda a, b: a <= b),
    "in": _member,
    "nin": lambda node, values: not _member(node, values),
    "exists": lambda node, value: True,
}


def holds(query: JSONPathQuery, op: Operator, value: object, data: object) -> bool:
    """True when at least one node ``query`` selects in ``data`` satisfies ``op``."""
    test = TESTS[op]
    return any(test(node.value, value) for node in query.finditer(data))  # type: ignore[arg-type]
