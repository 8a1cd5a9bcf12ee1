"""Filters at scale: what a thousand filtered subscriptions cost against ten.

Run: ``pytest benchmarks/test_filter_scale.py -p no:cacheprovider --benchmark-disable-gc``
(about 3 minutes on 2 cores).

One client; every subscription's pattern matches every event (``shop:*:*:*``),
and each has one payload filter. The loop (``Processor.process`` fed by
``SqliteStore.open_feed``, compiled matcher, batches of 100) works through a
fresh store file of waiting events per round, as in ``test_loop.py``; the first
batch, which loads the subscriptions, is outside the timed part. Payloads have
ten fields ``p0``..``p9`` and three ``items`` of a ``sku`` and a ``qty``, and
values are drawn so that about two subscriptions match each event, whatever
their number: the comparison is of matching, not of jobs written.

- "conditions": subscription ``n`` has one condition on ``$.p{n % 10}``, in
  turn ``eq``, ``in`` (two values) and ``gte``; 10, 100, 1,000 and 10,000 of them.
- "bare": a bare query ``$.items[?@.sku == 'K7' && @.qty > 0]``, 1,000
  subscriptions over 100 distinct queries (10 over 10 for the reference).
- "bare, one by one": the same with ``match(@.sku, 'K7')`` for the
  comparison, which the matcher cannot take apart (a function):
  jsonpath-rfc9535 evaluates each distinct query once per event.

Each contender's round follows a round of its reference (the 10-subscription
run of the same kind) on a fresh copy, and its ratio is to that reference
timed in turn (``figures.InTurn``). "load" times what a processor does at
start with 1,000 subscriptions with bare queries (1,000 distinct): read them
from the store, validate them and index them.
"""

from __future__ import annotations

import json
import random
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from benchmarks.figures import VERDICTS, Figure, InTurn, measure, record
from benchmarks.workload import INSERT_EVENT, START, LoopRound, fresh_copy, set_resume_token
from processor.matching import SubscriptionMatcher
from processor.stores.sqlite import SqliteStore, connect, transaction

TABLE = "Filters at scale, events per second (embedded store, one client)"
LOAD = "Loading filtered subscriptions"
CLIENT = "shop"
PATHS = 10
BATCH = 100
ROUNDS = 5
EVENTS = {"conditions": 6_000, "bare": 6_000, "bare, one by one": 1_500}
COUNTS = (10, 100, 1_000, 10_000)


def domain(kind: str, count: int) -> int:
    """How many values a field takes, so that about two subscriptions match an event."""
    return max(3, round(2 * count / 3)) if kind == "conditions" else max(3, round(1.25 * count))


def payload_filter(kind: str, count: int, n: int) -> dict[str, Any]:
    size = domain(kind, count)
    if kind == "conditions":
        field, value = f"$.p{n % PATHS}", (n // PATHS) % size
        condition = [
            {"path": field, "op": "eq", "value": value},
            {"path": field, "op": "in", "value": [value, (value + 1) % size]},
            {"path": field, "op": "gte", "value": size - 1 - (n % 7) / 100},  # holds at size - 1 only
        ][n % 3]
        return {"payload": [condition]}
    sku = f"K{n % min(100, count)}"
    test = f"@.sku == '{sku}'" if kind == "bare" else f"match(@.sku, '{sku}')"
    return {"payload": [f"$.items[?{test} && @.qty > 0]"]}


def event_data(kind: str, count: int, rng: random.Random) -> dict[str, Any]:
    size = domain(kind, count)
    if kind == "conditions":
        data: dict[str, Any] = {f"p{n}": rng.randrange(size) for n in range(PATHS)}
        data["items"] = [{"sku": "none", "qty": 1}]
        return data
    data = {f"p{n}": n for n in range(PATHS)}
    data["items"] = [{"sku": f"K{rng.randrange(size)}", "qty": rng.randrange(6)} for _ in range(3)]
    return data


def build(path: Path, kind: str, count: int) -> Path:
    connection = connect(path)
    with transaction(connection):
        connection.executemany(
            "INSERT INTO subscriptions (id, client_id, name, event_type_pattern, target, pool_code, filters) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    f"sub-{n:05d}",
                    CLIENT,
                    f"route {n}",
                    "shop:*:*:*",
                    f"https://hooks.example.com/{n}",
                    "default",
                    json.dumps(payload_filter(kind, count, n)),
                )
                for n in range(count)
            ],
        )
    rng = random.Random(count)
    with transaction(connection):
        connection.executemany(
            INSERT_EVENT,
            [
                (
                    "shop:orders:order:placed",
                    CLIENT,
                    "bench",
                    (START + timedelta(milliseconds=n)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                    json.dumps(event_data(kind, count, rng)),
                    f"order-{n}",
                )
                for n in range(EVENTS[kind])
            ],
        )
    set_resume_token(connection)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    return path


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Path]:
    folder = tmp_path_factory.mktemp("filter-scale")
    found: dict[tuple[str, int], Path] = {}
    for kind, count in [*(("conditions", c) for c in COUNTS), ("bare", 10), ("bare", 1_000)]:
        found[kind, count] = build(folder / f"{kind}-{count}.db", kind, count)
    for count in (10, 1_000):
        found["bare, one by one", count] = build(folder / f"library-{count}.db", "bare, one by one", count)
    return found


def jobs_per_event(round_: LoopRound) -> float:
    return round_.jobs() / (round_.events + BATCH)


CASES = [("conditions", c) for c in COUNTS] + [("bare", 10), ("bare", 1_000)]
CASES += [("bare, one by one", 10), ("bare, one by one", 1_000)]


@pytest.mark.parametrize(("kind", "count"), CASES, ids=[f"{k}-{c}" for k, c in CASES])
def test_loop_with_filtered_subscriptions(
    benchmark: Any, templates: dict[tuple[str, int], Path], tmp_path: Path, kind: str, count: int
) -> None:
    reference = None if count == 10 else InTurn(EVENTS[kind] - BATCH)
    rounds: list[LoopRound] = []

    def setup() -> tuple[tuple[LoopRound], dict[str, Any]]:
        for done in rounds:
            done.close()
        if reference is not None:
            turn = LoopRound(fresh_copy(templates[kind, 10], tmp_path / "reference.db"), BATCH)
            reference.time(turn.run)
            turn.close()
        rounds.append(LoopRound(fresh_copy(templates[kind, count], tmp_path / "loop.db"), BATCH))
        return (rounds[-1],), {}

    benchmark.group = f"filters at scale, {kind}"
    benchmark.pedantic(LoopRound.run, setup=setup, rounds=ROUNDS)
    last = rounds[-1]
    assert last.events == EVENTS[kind] - BATCH
    per_event = jobs_per_event(last)
    last.close()
    assert 0.5 < per_event < 8, f"about two jobs per event, not {per_event:.2f}"
    contender = "reference" if count == 10 else f"{count:,}"
    record(TABLE, kind, contender, EVENTS[kind] - BATCH, benchmark, reference=reference)
    measure(TABLE, f"{kind}, {count:,} subscriptions: jobs per event", per_event, "")


def test_loading_1000_subscriptions_with_filter_queries(tmp_path: Path) -> None:
    path = tmp_path / "load.db"
    connection = connect(path)
    with transaction(connection):
        connection.executemany(
            "INSERT INTO subscriptions (id, client_id, name, event_type_pattern, target, pool_code, filters) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    f"sub-{n}",
                    CLIENT,
                    "n",
                    "shop:*:*:*",
                    "https://hooks.example.com/in",
                    "default",
                    json.dumps(
                        {"payload": [f"$.items[?@.sku == 'K{n}' && @.qty > {n % 5}]", f"$.p{n % 10}"]}
                    ),
                )
                for n in range(1_000)
            ],
        )
    connection.close()
    best = float("inf")
    for _ in range(5):
        store = SqliteStore(path)
        started = time.perf_counter()
        matcher = SubscriptionMatcher()
        for change in store.subscription_changes():
            matcher.apply(change)
        best = min(best, time.perf_counter() - started)
        store.close()
        assert len(matcher) == 1_000
    measure(LOAD, "1,000 subscriptions, two bare queries each: read, validated, indexed", best * 1e3, "ms")
    LOADED.append(best)


LOADED: list[float] = []


def verdicts(figures: list[Figure]) -> list[str]:
    found = {(f.group, f.contender): f for f in figures if f.table == TABLE}
    lines = ["Targets of filters at scale (from this run):"]

    def ratio(kind: str, count: int) -> float | None:
        figure = found.get((kind, f"{count:,}"))
        return None if figure is None else figure.ratio(found.get((kind, "reference")))

    for kind, count, target in (("conditions", 1_000, 0.5), ("bare", 1_000, 0.2)):
        value = ratio(kind, count)
        if value is not None:
            met = "met" if value >= target else "NOT met"
            lines.append(f"  {kind}, 1,000 / 10 subscriptions: {value:.3f} (target >= {target}) {met}")
    curve = [f"{c:,}: {ratio('conditions', c):.3f}" for c in COUNTS[1:] if ratio("conditions", c) is not None]
    if curve:
        lines.append(f"  conditions, ratio to 10 subscriptions: {', '.join(curve)}")
    if LOADED:
        lines.append(f"  loading 1,000 subscriptions with queries: {LOADED[-1]:.3f} s (target < 0.5 s)")
    return lines if len(lines) > 1 else []


VERDICTS.append(verdicts)
