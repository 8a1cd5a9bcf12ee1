"""The straightforward matcher, kept as the oracle of the indexed one.

Every subscription is asked in turn: same client, active, pattern segment by
segment, then each filter on its own, each payload path run through
jsonpath-rfc9535 and every node it selects compared with the value as the data
contract says (``1`` equals ``1.0``, ``true`` equals no number, only numbers
and strings are ordered). Slow, and obviously right.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from processor.filters import EventFilters, compile_path, select
from processor.models import Event, Subscription


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def json_equal(left: object, right: object) -> bool:
    """JSON equality, written again here so that the oracle does not share it."""
    if _number(left) or _number(right):
        return _number(left) and _number(right) and left == right
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(json_equal(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    return type(left) is type(right) and left == right


def _never(op: str, value: object) -> bool:
    """A condition no value satisfies is false without looking: ``in`` nothing,
    or an order with what is neither a number nor a string."""
    ordering = op in ("gt", "gte", "lt", "lte")
    return (op == "in" and value == []) or (ordering and not (_number(value) or isinstance(value, str)))


def _ordered(compare: Callable[[Any, Any], bool]) -> Callable[[object, object], bool]:
    def test(node: object, value: object) -> bool:
        if (_number(node) and _number(value)) or (isinstance(node, str) and isinstance(value, str)):
            return compare(node, value)
        return False

    return test


def _member(node: object, values: object) -> bool:
    assert isinstance(values, list)
    return any(json_equal(node, value) for value in values)


TESTS: dict[str, Callable[[object, object], bool]] = {
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


def pattern_matches(pattern: str, event_type: str) -> bool:
    return all(p in ("*", e) for p, e in zip(pattern.split(":"), event_type.split(":"), strict=True))


def _checks(filters: EventFilters, event: Event) -> Iterable[Callable[[], bool]]:
    """One callable per condition: true, false, or it raises."""
    metadata = event.metadata or {}
    if filters.source is not None:
        yield lambda: event.source in (filters.source or ())  # [] included: no source is in it
    for name, expected in (filters.metadata or {}).items():
        yield partial(
            lambda name, expected: name in metadata and json_equal(metadata[name], expected), name, expected
        )
    for entry in filters.payload or ():
        if isinstance(entry, str):
            yield partial(lambda query: bool(select(compile_path(query), event.data)), entry)
        elif _never(entry.op, entry.value):
            yield lambda: False
        else:
            yield partial(_holds, TESTS[entry.op], entry.path, entry.value, event.data)


def _holds(test: Callable[[object, object], bool], path: str, value: object, data: object) -> bool:
    return any(test(node, value) for node in select(compile_path(path), data))


def verdict(subscription: Subscription, event: Event) -> str:
    """``matched``, ``failed`` (a condition raised and none was false), or ``no``."""
    if (
        not subscription.active
        or subscription.client_id != event.client_id
        or not pattern_matches(subscription.event_type_pattern, event.type)
    ):
        return "no"
    if subscription.filters is None:
        return "matched"
    failed = False
    for check in _checks(subscription.filters, event):
        try:
            if not check():
                return "no"
        except Exception:
            failed = True
    return "failed" if failed else "matched"


def expected(subscriptions: Iterable[Subscription], event: Event) -> tuple[set[str], set[str]]:
    """The ids the oracle finds matched, and those it finds failed."""
    verdicts = [(s.id, verdict(s, event)) for s in subscriptions]
    return {i for i, v in verdicts if v == "matched"}, {i for i, v in verdicts if v == "failed"}
