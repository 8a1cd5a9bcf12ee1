"""Each operator and each kind of filter, one example at a time: what the data
contract says a subscription's filters mean on an event."""

from __future__ import annotations

from typing import Any

import pytest

from processor.matching import SubscriptionMatcher
from processor.models import Event, Subscription

ORDER = {
    "tier": "gold",
    "total": 12.5,
    "count": 3,
    "vip": True,
    "note": None,
    "lines": [{"sku": "A1", "qty": 2}],
}


def matches(filters: dict[str, Any], data: object = ORDER, **event: Any) -> bool:
    matcher = SubscriptionMatcher()
    matcher.put(
        Subscription.model_validate(
            {
                "id": "s",
                "client_id": "acme",
                "name": "n",
                "event_type_pattern": "shop:*:*:*",
                "target": "https://hooks.example.com/in",
                "pool_code": "p",
                "filters": filters,
            }
        )
    )
    found = Event.model_validate(
        {"id": "e", "type": "shop:orders:order:placed", "client_id": "acme", "time": "2025-01-01T00:00:00Z"}
        | {"data": data, **event}
    )
    matched, failed = matcher.match(found)
    assert not failed
    return [s.id for s in matched] == ["s"]


def condition(path: str, op: str, value: object = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": path, "op": op}
    if op != "exists":
        entry["value"] = value
    return {"payload": [entry]}


@pytest.mark.parametrize(
    ("op", "value", "holds"),
    [
        ("eq", "gold", True),
        ("eq", "silver", False),
        ("ne", "silver", True),
        ("ne", "gold", False),
        ("in", ["silver", "gold"], True),
        ("in", ["silver"], False),
        ("in", [], False),
        ("nin", ["silver"], True),
        ("nin", ["gold", "silver"], False),
        ("gt", "fold", True),  # strings are ordered with strings
        ("gt", "gold", False),
        ("gte", "gold", True),
        ("lt", "silver", True),
        ("lte", "gold", True),
        ("lte", "a", False),
        ("gt", 1, False),  # not across types
        ("exists", None, True),
    ],
)
def test_each_operator_on_a_string(op: str, value: object, holds: bool) -> None:
    assert matches(condition("$.tier", op, value)) is holds


@pytest.mark.parametrize(
    ("path", "op", "value", "holds"),
    [
        ("$.total", "eq", 12.5, True),
        ("$.count", "eq", 3.0, True),  # 3 equals 3.0
        ("$.vip", "eq", 1, False),  # true equals no number
        ("$.vip", "eq", True, True),
        ("$.count", "in", [True, 3], True),
        ("$.vip", "in", [1], False),
        ("$.total", "gt", 12, True),
        ("$.total", "gte", 12.5, True),
        ("$.total", "lt", 12.5, False),
        ("$.count", "lte", 3, True),
        ("$.vip", "gt", False, False),  # booleans are not ordered
        ("$.note", "eq", None, True),
        ("$.note", "exists", None, True),
        ("$.missing", "exists", None, False),
        ("$.missing", "ne", 1, False),  # nothing selected: no value differs
        ("$.lines[*].qty", "gte", 2, True),
        ("$.lines", "eq", [{"sku": "A1", "qty": 2.0}], True),  # arrays and objects by value
        ("$.lines[0]", "in", [{"qty": 2, "sku": "A1"}], True),
    ],
)
def test_each_operator_on_numbers_booleans_null_and_containers(
    path: str, op: str, value: object, holds: bool
) -> None:
    assert matches(condition(path, op, value)) is holds


@pytest.mark.parametrize(
    ("query", "holds"),
    [
        ("$.lines[?@.qty > 1]", True),
        ("$.lines[?@.qty > 2]", False),
        ("$.lines[?@.sku == 'A1' && @.qty >= 2]", True),
        ("$.lines[?@.sku == 'B2' || @.qty == 2]", True),
        ("$.lines[?!@.price]", True),
        ("$.lines[?match(@.sku, '[A-Z][0-9]')]", True),
        ("$.lines[?search(@.sku, 'B')]", False),
        ("$.lines[?length(@.sku) == 2]", True),
        ("$.tier", True),
        ("$.nothing", False),
    ],
)
def test_a_bare_query_holds_when_it_selects_anything(query: str, holds: bool) -> None:
    assert matches({"payload": [query]}) is holds


def test_source_is_one_of_a_list_and_an_event_without_one_is_in_none() -> None:
    assert matches({"source": ["web", "app"]}, source="app")
    assert not matches({"source": ["web"]}, source="app")
    assert not matches({"source": ["web"]})
    assert not matches({"source": []}, source="web")


def test_metadata_entries_must_each_be_there_and_equal_as_json_values() -> None:
    assert matches({"metadata": {"region": "eu", "tier": 1}}, metadata={"region": "eu", "tier": 1.0, "x": 0})
    assert not matches({"metadata": {"region": "eu"}}, metadata={"region": "us"})
    assert not matches({"metadata": {"region": "eu"}}, metadata={})
    assert not matches({"metadata": {"flag": 1}}, metadata={"flag": True})
    assert not matches({"metadata": {"region": "eu"}})


def test_every_part_present_must_hold() -> None:
    both = {"source": ["web"], "metadata": {"region": "eu"}, "payload": ["$.lines[?@.qty > 1]"]}
    assert matches(both, source="web", metadata={"region": "eu"})
    assert not matches(both, source="web", metadata={"region": "us"})
    assert not matches(both, data={"lines": []}, source="web", metadata={"region": "eu"})
    assert matches({})
