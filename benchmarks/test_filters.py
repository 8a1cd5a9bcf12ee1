"""Payload filters: the cost of matching an event against many filtered
subscriptions, and RE2's ``match()``/``search()`` against the backtracking
engine jsonpath-rfc9535 ships with.

Run: ``pytest benchmarks/test_filters.py -p no:cacheprovider --benchmark-disable-gc``

- "1,000 filtered": one client with 1,000 subscriptions whose patterns all match
  the event's type, each with one payload filter: a quarter comparisons
  (``gte``, ``eq``, ``in``), a quarter ``match()``, a quarter ``search()``, a
  quarter a bare query with a comparison; half of them hold for the event.
  The figure is the matcher's own (``SubscriptionMatcher.match``), per event.
- "regex": the same queries with ``match()``/``search()`` on ordinary patterns,
  over the same events, evaluated by this project's environment (RE2) and by
  jsonpath-rfc9535's default one (the ``regex`` module, which backtracks),
  timed in turn. The target: RE2 no slower than 1.5 times the backtracking
  engine, i.e. a ratio of at least 0.667.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import jsonpath_rfc9535
import pytest

from benchmarks.figures import VERDICTS, Figure, InTurn, measure, record
from processor.filters import compile_path
from processor.matching import SubscriptionMatcher
from processor.models import Event, Subscription

TABLE = "Payload filters"
SUBSCRIPTIONS = 1_000
EVENTS = 200
# Ordinary patterns: what routing by payload uses them for. One-digit counts: the
# I-Regexp checker that jsonpath-rfc9535 ships with refuses longer ones.
REGEX_QUERIES = (
    "$[?match(@.code, '[A-Z][A-Z]-[0-9]+')]",
    "$[?search(@.email, '@example\\\\.(com|org)')]",
    "$[?match(@.region, 'eu-(west|central)-[1-3]')]",
    "$[?search(@.note, 'urgent|priority')]",
    "$.items[?match(@.sku, 'SKU-[0-9]{4}')]",
)


def payload(rng: random.Random, n: int) -> dict[str, Any]:
    return {
        "code": f"{rng.choice(['AB', 'CD', 'x1'])}-{n}",
        "email": f"user{n}@{rng.choice(['example.com', 'example.net', 'example.org'])}",
        "region": rng.choice(["eu-west-1", "eu-central-3", "us-east-2"]),
        "note": rng.choice(["urgent: call back", "fyi", "normal priority"]) * 3,
        "amount": rng.randrange(0, 500),
        "tier": rng.choice(["gold", "silver", "bronze"]),
        "items": [{"sku": f"SKU-{rng.randrange(10_000):04d}", "qty": rng.randrange(1, 9)} for _ in range(3)],
    }


def filters(n: int) -> dict[str, Any]:
    kind = n % 4
    if kind == 0:
        op, value = [("gte", 250), ("eq", "gold"), ("in", ["gold", "silver"])][n % 3]
        path = "$.amount" if op == "gte" else "$.tier"
        return {"payload": [{"path": path, "op": op, "value": value}]}
    if kind == 3:
        return {"payload": [f"$.items[?@.qty > {n % 8}]"]}
    return {"payload": [REGEX_QUERIES[n % len(REGEX_QUERIES)]]}


@pytest.fixture(scope="module")
def events() -> list[Event]:
    rng = random.Random(7)
    now = datetime(2025, 3, 1, tzinfo=UTC)
    return [
        Event(
            id=f"e{n}", type="orders:checkout:order:placed", client_id="acme", time=now, data=payload(rng, n)
        )
        for n in range(EVENTS)
    ]


def test_matching_one_client_with_1000_filtered_subscriptions(benchmark: Any, events: list[Event]) -> None:
    matcher = SubscriptionMatcher()
    for n in range(SUBSCRIPTIONS):
        document = {
            "id": f"s{n}",
            "client_id": "acme",
            "name": f"filtered {n}",
            "event_type_pattern": "orders:*:*:*" if n % 2 else "*:*:*:placed",
            "target": "https://hooks.example.com/in",
            "pool_code": "p",
            "filters": filters(n),
        }
        matcher.put(Subscription.model_validate(document))
    matched = sum(len(matcher.match(event)[0]) for event in events)

    def round_() -> None:
        for event in events:
            matcher.match(event)

    benchmark.group = "filters"
    benchmark.pedantic(round_, rounds=5, warmup_rounds=1)
    per_event = benchmark.stats.stats.min / len(events)
    measure(TABLE, f"{SUBSCRIPTIONS:,} filtered subscriptions: per event", per_event * 1e6, "µs")
    measure(
        TABLE,
        f"{SUBSCRIPTIONS:,} filtered subscriptions: per subscription",
        per_event * 1e9 / SUBSCRIPTIONS,
        "ns",
    )
    measure(TABLE, "subscriptions matched per event", matched / len(events), "")


@pytest.mark.parametrize("engine", ["backtracking", "re2"])
def test_regex_functions(benchmark: Any, engine: str, events: list[Event]) -> None:
    ours = [compile_path(query) for query in REGEX_QUERIES]
    theirs = [jsonpath_rfc9535.compile(query) for query in REGEX_QUERIES]
    datas = [event.data for event in events]

    def run(queries: list[Any]) -> list[bool]:
        return [any(True for _ in query.finditer(data)) for data in datas for query in queries]

    assert run(ours) == run(theirs), "both engines answer alike on ordinary patterns"
    queries = ours if engine == "re2" else theirs
    in_turn = InTurn(len(datas) * len(queries)) if engine == "re2" else None

    def reference_round() -> None:
        if in_turn is not None:
            in_turn.time(lambda: run(theirs))

    benchmark.group = "regex functions"
    benchmark.pedantic(run, args=(queries,), setup=reference_round, rounds=15, warmup_rounds=1)
    group = "match()/search(), ordinary patterns"
    contender = "reference" if engine == "backtracking" else "re2"
    record(TABLE, group, contender, len(datas) * len(queries), benchmark, reference=in_turn)


def verdicts(figures: list[Figure]) -> list[str]:
    found = {f.contender: f for f in figures if f.table == TABLE}
    re2 = found.get("re2")
    if re2 is None:
        return []
    ratio = re2.ratio(found.get("reference"))
    assert ratio is not None
    met = "met" if ratio >= 1 / 1.5 else "NOT met"
    return [
        "Targets of the filters (from this run):",
        f"  RE2 / backtracking engine, ordinary patterns: {ratio:.3f} (target >= 0.667: at most 1.5x) {met}",
    ]


VERDICTS.append(verdicts)
