"""The indexed matcher gives exactly the straightforward matcher's answers.

``tests/processor/oracle.py`` asks every subscription in turn, each filter on
its own through jsonpath-rfc9535; the ``SubscriptionMatcher`` indexes
conditions and shares each distinct selection within an event. Hypothesis
drives both through the same subscription changes and events, with either
trie, and every event must get the same matched and failed pairs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from processor import filters, matching, predicates
from processor.matching import SubscriptionMatcher
from processor.models import Event, Subscription
from processor.stores.base import SubscriptionChange
from tests.conftest import IndexClass
from tests.processor.oracle import expected

EVENT_TYPES = ("a:b:c:d", "a:x:c:y")
PATTERNS = ("a:b:c:d", "a:*:c:*", "*:*:*:*", "x:b:c:d")
SOURCES = ("s1", "s2")
KEYS = ("a", "b", "n", "m", "items")
# Values that subscriptions and events share often enough to match, and
# numbers at the edges of JSON equality and order: 1 and 1.0 alike, 2**53 + 1
# beyond a double, booleans that Python would take for 1 and 0.
COMMON = [0, 1, 1.0, 2, True, False, None, "a", "b"]
EDGES = [-0.0, 2**53, 2**53 + 1, float(2**53), 1e308, -1e308, 5e-324, 10**30, "é", "10", "ab"]
# Weights by repetition: hypothesis draws each branch of one_of alike, duplicates or not.
SCALARS = st.sampled_from(COMMON * 8 + EDGES + [-3, -1, 3, ""])
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)
    ),
    max_leaves=6,
)
# Events may hold what no subscription can: NaN, as a BSON double can.
EVENT_SCALARS = st.sampled_from(COMMON * 8 + EDGES + [-3, -1, 3, "", float("nan")])
EVENT_JSON = st.recursive(
    EVENT_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=10,
)


def mostly(usual: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` seven times in eight."""
    return st.integers(0, 7).flatmap(lambda n: other if n == 0 else usual)


ITEM = st.fixed_dictionaries({"n": EVENT_SCALARS}, optional={"m": EVENT_SCALARS, "a": EVENT_JSON})
PAYLOADS = mostly(
    st.fixed_dictionaries(
        {
            "a": st.one_of(EVENT_SCALARS, st.fixed_dictionaries({"b": EVENT_SCALARS, "n": EVENT_JSON})),
            "n": EVENT_SCALARS,
            "items": st.lists(mostly(ITEM, EVENT_JSON), max_size=4),
        },
        optional={"b": EVENT_JSON, "m": EVENT_SCALARS},
    ),
    EVENT_JSON,
)
PATHS = (
    "$",
    "$.a",
    "$.b",
    "$['n']",
    "$.a.b",
    "$.a.n",
    "$.items",
    "$.items[*]",
    "$.items[*].n",
    "$.items[0]",
    "$.items[-1]",
    "$.items[0].n",
    "$..n",
    "$.a[*]",
    "$[*]",
)
LITERALS = ("1", "1.0", "0", "-1", "2.5", "true", "false", "null", "'a'", "'b'", "''")
COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")
BARE = (
    "$.items[?@.n > 1 && @.m]",
    "$.items[?@.n == 1 && @.m != 'a']",
    "$.items[?@.m == 'a' && @.n >= 1 && !@.a]",
    "$.items[?!@.m]",
    "$.items[?(@.n < 2 && @.m) && @.n != 0]",
    "$.items[?@.n > 0 || @.m == 'b']",
    "$.items[?(@.n > 0 || @.m == 'b') && @.a]",
    "$.items[?@.n == 0 || @.n == 1 && @.m || !@.a]",
    "$[?@.b == 1 && @.n]",
    "$.items[?@.n]",
    "$[?match(@, 'a.*')]",
    "$.items[?search(@.m, 'b')]",
    "$..[?@.n == 1]",
    "$.a.b",
    "$.items[?@.n > 1].m",
    "$[?@.a == @.b]",
)


@st.composite
def comparisons(draw: st.DrawFn) -> str:
    relative = draw(st.sampled_from(["@.n", "@", "@.a.b", "@[0]", "@.m"]))
    op, literal = draw(st.sampled_from(COMPARISONS)), draw(st.sampled_from(LITERALS))
    if relative != "@" and draw(st.integers(0, 4)) == 0:
        return draw(st.sampled_from(["", "!"])) + relative  # an existence test
    return f"{relative} {op} {literal}" if draw(st.booleans()) else f"{literal} {op} {relative}"


@st.composite
def bare_queries(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(st.sampled_from(BARE))
    prefix = draw(st.sampled_from(["$.items", "$", "$.a", "$.items[*]"]))
    tests = draw(st.lists(comparisons(), min_size=1, max_size=1 if kind == 1 else 4))
    joined = "".join(f" {draw(st.sampled_from(['&&', '||']))} {test}" for test in tests[1:])
    return f"{prefix}[?{tests[0]}{joined}]"


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(st.sampled_from(filters.OPERATORS))
    scalar_paths = ["$['n']", "$.a.b", "$.items[*].n", "$..n", "$.items[0].n"] * 3
    condition: dict[str, Any] = {"path": draw(st.sampled_from([*PATHS, *scalar_paths])), "op": op}
    if op in ("in", "nin"):
        condition["value"] = draw(st.lists(st.one_of(SCALARS, JSON), max_size=4))
    elif op in ("gt", "gte", "lt", "lte"):
        condition["value"] = draw(st.sampled_from([0, 1, 1.0, 2, 2.5, -1, "a", "b", "", *EDGES, True, None]))
    elif op != "exists":
        condition["value"] = draw(mostly(SCALARS, JSON))
    return condition


@st.composite
def event_filters(draw: st.DrawFn) -> dict[str, Any] | None:
    if draw(st.integers(0, 4)) == 0:
        return None
    found: dict[str, Any] = {}
    if draw(st.integers(0, 3)) == 0:
        found["source"] = draw(st.lists(st.sampled_from(SOURCES), max_size=2))
    if draw(st.integers(0, 3)) == 0:
        found["metadata"] = draw(st.dictionaries(st.sampled_from(("tier", "region")), SCALARS, max_size=2))
    found["payload"] = draw(st.lists(st.one_of(conditions(), bare_queries()), max_size=2))
    return found


@st.composite
def subscriptions(draw: st.DrawFn) -> Subscription | None:
    document = {
        "id": f"s{draw(st.integers(0, 7))}",
        "client_id": draw(st.sampled_from(("c1", "c1", "c1", "c2"))),
        "name": "n",
        "event_type_pattern": draw(st.sampled_from(PATTERNS)),
        "target": "https://hooks.example.com/in",
        "pool_code": "p",
        "active": draw(st.integers(0, 5)) > 0,
        "filters": draw(event_filters()),
    }
    try:
        return Subscription.model_validate(document)
    except ValidationError:  # a filter the contract refuses: never held by a matcher
        return None


@st.composite
def events(draw: st.DrawFn) -> Event:
    return Event(
        id="e",
        type=draw(st.sampled_from(EVENT_TYPES)),
        client_id=draw(st.sampled_from(("c1", "c1", "c1", "c2"))),
        source=draw(st.sampled_from((None, *SOURCES))),
        time=datetime(2025, 1, 1, tzinfo=UTC),
        data=draw(PAYLOADS),
        metadata=draw(
            st.one_of(
                st.none(), st.fixed_dictionaries({"tier": EVENT_SCALARS}, optional={"region": EVENT_JSON})
            )
        ),
    )


Step = tuple[str, Any]
changes = st.one_of(
    subscriptions().map(lambda s: ("put", s)),
    st.integers(0, 7).map(lambda n: ("drop", f"s{n}")),
)
steps = st.tuples(
    st.lists(subscriptions().map(lambda s: ("put", s)), min_size=1, max_size=8),
    st.lists(
        st.one_of(changes, events().map(lambda e: ("event", e)), events().map(lambda e: ("event", e))),
        max_size=12,
    ),
    st.lists(events().map(lambda e: ("event", e)), min_size=1, max_size=3),
).map(lambda parts: parts[0] + parts[1] + parts[2])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=steps)
def test_the_indexed_matcher_finds_exactly_the_pairs_the_straightforward_one_finds(
    index_cls: IndexClass, scenario: list[Step]
) -> None:
    matcher = SubscriptionMatcher(index_cls)
    held: dict[str, Subscription] = {}
    for kind, item in scenario:
        if kind == "put" and item is not None:
            matcher.put(item)
            held[item.id] = item
        elif kind == "drop":
            matcher.discard(item)
            held.pop(item, None)
        elif kind == "event":
            matched, failed = matcher.match(item)
            ids = [s.id for s in matched]
            assert len(ids) == len(set(ids)), "a subscription is matched once"
            assert (set(ids), {s.id for s, _ in failed}) == expected(held.values(), item)
    assert len(matcher) == sum(s.active for s in held.values())


@st.composite
def many_filtered(draw: st.DrawFn) -> list[Subscription]:
    """Up to 40 subscriptions of one client and pattern, each with one or two
    payload filters: many pairs per event, so that each kind of condition is
    found to hold and not to hold."""
    found = []
    for number, payload in enumerate(
        draw(
            st.lists(
                st.lists(st.one_of(conditions(), bare_queries()), min_size=1, max_size=2),
                min_size=10,
                max_size=40,
            )
        )
    ):
        with contextlib.suppress(ValidationError):  # a filter the contract refuses
            found.append(subscription(number, {"payload": payload}))
    return found


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(held=many_filtered(), events=st.lists(events(), min_size=1, max_size=6))
def test_many_filters_on_shared_paths_hold_exactly_where_the_straightforward_matcher_says(
    index_cls: IndexClass, held: list[Subscription], events: list[Event]
) -> None:
    matcher = SubscriptionMatcher(index_cls)
    for subscription in held:
        matcher.put(subscription)
    for event in events:
        if event.client_id != "c1":
            continue
        matched, failed = matcher.match(event)
        assert (sorted(s.id for s in matched), {s.id for s, _ in failed}) == (
            sorted(expected(held, event)[0]),
            expected(held, event)[1],
        )


def event(data: object, **fields: Any) -> Event:
    return Event.model_validate(
        {
            "id": "e1",
            "type": "a:b:c:d",
            "client_id": "c1",
            "time": "2025-01-01T00:00:00Z",
            "data": data,
            **fields,
        }
    )


def subscription(number: int, filters: dict[str, Any] | None) -> Subscription:
    return Subscription.model_validate(
        {
            "id": f"s{number}",
            "client_id": "c1",
            "name": "n",
            "event_type_pattern": "a:*:*:*",
            "target": "https://hooks.example.com/in",
            "pool_code": "p",
            "filters": filters,
        }
    )


def matched_ids(matcher: SubscriptionMatcher, data: object, **fields: Any) -> set[str]:
    return {s.id for s in matcher.match(event(data, **fields))[0]}


def test_each_distinct_query_is_evaluated_once_per_event_however_many_subscriptions_use_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    evaluated: list[str] = []
    real: Callable[..., list[object]] = filters.select

    def counting(query: Any, data: object) -> list[object]:
        evaluated.append(str(query))
        return real(query, data)

    monkeypatch.setattr(predicates, "select", counting)
    matcher = SubscriptionMatcher()
    spellings = ("$..n", "$..['n']", '$..["n"]')  # one the library evaluates, not a walk of names
    for number in range(300):
        path = spellings[number % 3]
        matcher.put(subscription(number, {"payload": [{"path": path, "op": "eq", "value": number % 7}]}))
    assert matched_ids(matcher, {"items": [{"n": 3}, {"m": {"n": 5}}]}) == {
        f"s{n}" for n in range(300) if n % 7 in (3, 5)
    }
    assert evaluated == ["$..['n']"], "three spellings, one normalized query, one evaluation"


def test_a_thousand_values_of_in_and_the_ranges_answer_as_json_equality_and_order_say() -> None:
    matcher = SubscriptionMatcher()
    matcher.put(
        subscription(
            1, {"payload": [{"path": "$.tier", "op": "in", "value": [f"t{n}" for n in range(100_000)]}]}
        )
    )
    matcher.put(subscription(2, {"payload": [{"path": "$.n", "op": "in", "value": [1, None, True, [1, 2]]}]}))
    matcher.put(subscription(3, {"payload": [{"path": "$.n", "op": "gte", "value": 2}]}))
    matcher.put(subscription(4, {"payload": [{"path": "$.n", "op": "lt", "value": "b"}]}))
    matcher.put(subscription(5, {"payload": [{"path": "$.n", "op": "gt", "value": True}]}))
    assert matched_ids(matcher, {"tier": "t99999"}) == {"s1"}
    assert matched_ids(matcher, {"tier": "t100000"}) == set()
    assert matched_ids(matcher, {"n": 1.0}) == {"s2"}, "1.0 is 1"
    assert matched_ids(matcher, {"n": True}) == {"s2"}, "true is a member as a boolean, and is not above true"
    assert matched_ids(matcher, {"n": [1.0, 2]}) == {"s2"}
    assert matched_ids(matcher, {"n": 2}) == {"s3"}
    assert matched_ids(matcher, {"n": 2**53 + 1}) == {"s3"}
    assert matched_ids(matcher, {"n": "a"}) == {"s4"}, "strings are ordered with strings"
    assert matched_ids(matcher, {"n": False}) == set(), "false is no number"
    assert matcher.match(event({"tier": "t5"}))[0][0].id == "s1", "a long list is checked, not indexed"


def test_a_range_holds_when_any_of_the_values_selected_is_beyond_its_bound() -> None:
    matcher = SubscriptionMatcher()
    for number, (op, bound) in enumerate([("gt", "b"), ("lt", "b"), ("gte", 3), ("lte", 1), ("gt", 3)]):
        matcher.put(subscription(number, {"payload": [{"path": "$.items[*].n", "op": op, "value": bound}]}))
    items = {"items": [{"n": "a"}, {"n": "c"}, {"n": 1}, {"n": 3}, {"n": True}]}
    assert matched_ids(matcher, items) == {"s0", "s1", "s2", "s3"}, (
        "c > b, a < b, 3 >= 3, 1 <= 1; none above 3"
    )


def test_a_filter_of_several_tests_holds_when_one_child_passes_them_all() -> None:
    matcher = SubscriptionMatcher()
    queries = [
        "$.items[?@.n <= 1 && @.m >= 'a']",
        "$.items[?@.on >= true && @.on <= true]",
        "$.items[?@.n == 1 && @.m == 'b']",
        "$.items[?@.n != 1 && !@.m]",
    ]
    for number, query in enumerate(queries):
        matcher.put(subscription(number, {"payload": [query]}))
    assert matched_ids(matcher, {"items": [{"n": 1, "m": "a", "on": True}]}) == {"s0", "s1"}
    assert matched_ids(matcher, {"items": [{"n": 1}, {"m": "b"}]}) == set(), "no one child passes both"
    assert matched_ids(matcher, {"items": [{"n": 2, "m": "b"}, {"x": 1}]}) == {"s3"}, "n is missing: != holds"


def test_a_query_that_cannot_be_evaluated_fails_only_the_pairs_that_need_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(filters, "MAX_STEPS", 10_000)
    matcher = SubscriptionMatcher()
    wide = {"rows": [[n, n, n] for n in range(10_000)], "tier": "gold"}
    matcher.put(subscription(1, {"payload": [{"path": "$.rows[*][*]", "op": "eq", "value": -1}]}))
    matcher.put(
        subscription(2, {"payload": [{"path": "$.tier", "op": "eq", "value": "gold"}, "$.rows[*][*]"]})
    )
    matcher.put(
        subscription(3, {"payload": [{"path": "$.tier", "op": "eq", "value": "silver"}, "$.rows[*][*]"]})
    )
    matcher.put(subscription(4, {"payload": [{"path": "$.tier", "op": "eq", "value": "gold"}]}))
    matcher.put(subscription(5, None))
    matched, failed = matcher.match(event(wide))
    assert {s.id for s in matched} == {"s4", "s5"}
    assert {s.id: type(error).__name__ for s, error in failed} == {
        "s1": "FilterBudgetExceeded",
        "s2": "FilterBudgetExceeded",
    }, "s3 does not fail: its tier is not silver, whatever the rows hold"
    assert {s.id for s in matcher.match(event({"rows": [[-1]], "tier": "gold"}))[0]} == {
        "s1",
        "s2",
        "s4",
        "s5",
    }


def test_a_query_judged_child_by_child_stops_at_its_budget_before_it_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(filters, "MAX_STEPS", 1_000)
    matcher = SubscriptionMatcher()
    matcher.put(subscription(1, {"payload": ["$.items[?" + "||".join(["@.a!=0"] * 60) + "]"]}))
    matcher.put(subscription(2, None))
    matched, failed = matcher.match(event({"items": [{"a": 0}] * 100}))
    assert [s.id for s in matched] == ["s2"]
    assert [(s.id, type(error).__name__) for s, error in failed] == [("s1", "FilterBudgetExceeded")], (
        "100 children times 60 tests of two steps each: over 1,000"
    )
    assert [s.id for s in matcher.match(event({"items": [{"a": 0}, {"a": 1}]}))[0]] == ["s2", "s1"]


def test_a_condition_no_value_satisfies_makes_its_pair_not_matched_whatever_else_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(filters, "MAX_STEPS", 100)
    matcher = SubscriptionMatcher()
    wide = {"rows": [[1, 2]] * 60}
    held = [
        subscription(1, {"payload": [{"path": "$.rows[*][*]", "op": "gt", "value": True}]}),
        subscription(2, {"payload": [{"path": "$.rows[*][*]", "op": "in", "value": []}]}),
        subscription(3, {"payload": [{"path": "$.rows[*][*]", "op": "in", "value": [1]}]}),
    ]
    for one in held:
        matcher.put(one)
    matched, failed = matcher.match(event(wide))
    assert (
        (matched, {s.id for s, _ in failed}) == ([], {"s3"}) == (list(expected(held, event(wide))[0]), {"s3"})
    )


def test_paths_a_bare_query_is_taken_apart_into_need_not_be_paths_one_could_write() -> None:
    # Printed again, $.a is $['a'] (1,234 characters for this one) and 1.0e400 is inf.
    long = "$" + ".a" * 246 + "[?@.x == 1 && @.y]"
    inf = "$.items[?@.n < 1.0e400 && @.m]"
    matcher = SubscriptionMatcher()
    matcher.put(subscription(1, {"payload": [long]}))
    matcher.put(subscription(2, {"payload": [inf]}))
    deep: dict[str, Any] = {"x": 1, "y": True}
    for _ in range(246):
        deep = {"a": [deep] if _ == 0 else deep}
    assert matched_ids(matcher, deep) == {"s1"}
    assert matched_ids(matcher, {"items": [{"n": 10**300, "m": 1}]}) == {"s2"}


def test_a_subscription_that_cannot_be_indexed_is_skipped_and_the_others_kept(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = predicates.conditions

    def failing(filters: Any) -> list[predicates.Condition]:
        if filters is not None and filters.source == ["poison"]:
            raise RuntimeError("a defect")
        return real(filters)

    monkeypatch.setattr(matching, "conditions", failing)
    matcher = SubscriptionMatcher()
    applied = []
    for number, source in enumerate(["poison", "s1"]):
        document = subscription(number, {"source": [source]}).model_dump()
        applied.append(matcher.apply(SubscriptionChange(document["id"], document, 0)))
    assert applied == [False, True], "the matcher reports the subscription it skipped, for the loop to count"
    assert matched_ids(matcher, {}, source="s1") == {"s1"} and len(matcher) == 1
    assert "subscription 's0' skipped: it could not be indexed" in caplog.text


def test_a_bare_query_of_one_comparison_is_indexed_as_the_condition_it_is() -> None:
    one = predicates.bare("$.items[?10 >= @.qty]")
    assert isinstance(one, predicates.Bound) and (one.selector.key, one.op, one.value) == (
        "$['items'][*]['qty']",
        "lte",
        10,
    )
    same = predicates.bare("$.items[?@.on >= true]")
    assert isinstance(same, predicates.OneOf) and same.selector.key == "$['items'][*]['on']", (
        "RFC 9535's >= is > or ==, and only == holds between booleans"
    )
    assert isinstance(predicates.bare("$.items[?@.qty]"), predicates.Exists)
    unequal = predicates.bare("$.items[?@.qty != 1]")
    assert isinstance(unequal, predicates.SomeChild) and unequal.indexed_by() == [], (
        "!= holds where qty is missing"
    )
    both = predicates.bare("$.items[?@.qty > 1 && @.sku == 'K1']")
    assert isinstance(both, predicates.SomeChild) and [type(c) for c in both.indexed_by()] == [
        predicates.OneOf
    ], "judged child by child, found by its sku"
    either = predicates.bare("$.items[?@.sku == 'K1' || @.qty > 5 && @.sku]")
    assert [type(c) for c in either.indexed_by()] == [predicates.OneOf, predicates.Bound], "found by either"
    assert predicates.bare("$.items[?@.sku == 'K1' || @.qty != 5]").indexed_by() == [], "!= no index can find"
    assert isinstance(predicates.bare("$.items[?@.qty > 1].sku"), predicates.Exists), (
        "not a filter at the end"
    )
    assert isinstance(predicates.bare("$.items[?(@.qty > 1 || @.sku) && @.a]"), predicates.Exists), (
        "an || inside an && is the library's"
    )
