"""Match rate of both tries against the reference lookup and a naive linear scan.

Run: ``pytest benchmarks/test_match.py`` (figures in benchmarks/README.md).

The reference is the most a matcher called from Python can reach: one dict
lookup of the whole event type behind a Python call. "distinct" feeds event
types that all differ to tries built without a result cache, so that the
figure is the trie's own, whatever share of a round the cache could have kept;
"repeated" feeds 50 hot types, as real traffic does, to tries with the default
cache.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from functools import cache
from typing import Any

import pytest

from benchmarks.corpus import Corpus, make_corpus
from benchmarks.figures import VERDICTS, Figure, InTurn, record
from fastmatch import _pytrie

try:
    from fastmatch import _ctrie
except ImportError:  # installed with FASTMATCH_NO_EXTENSIONS=1
    _ctrie = None  # type: ignore[assignment]

SIZES = (1_000, 10_000, 100_000)
LINEAR_EVENTS = 50  # a linear scan is too slow for the full list at 100,000 patterns


@cache
def corpus(size: int) -> Corpus:
    return make_corpus(size, event_count=10_000)


def linear_scan(patterns: list[str]) -> Callable[[str], list[int]]:
    """What the peers do: compare every pattern, pre-split, one after another."""
    split = [(p.split(":"), key) for key, p in enumerate(patterns)]

    def match(event_type: str) -> list[int]:
        segments = event_type.split(":")
        return [
            key
            for pattern, key in split
            if all(p == "*" or p == s for p, s in zip(pattern, segments, strict=True))
        ]

    return match


def reference(event_types: list[str]) -> Callable[[str], list[int]]:
    table = {event_type: [0] for event_type in event_types}

    def lookup(event_type: str) -> list[int]:
        return table[event_type]

    return lookup


def trie(module: Any, patterns: list[str], cached: bool) -> Callable[[str], list[Hashable]]:
    index = module.PatternIndex() if cached else module.PatternIndex(cache_size=0)
    for key, pattern in enumerate(patterns):
        index.add(pattern, f"subscription-{key}")
    return index.match  # type: ignore[no-any-return]


def run_all(match: Callable[[str], Any], event_types: list[str]) -> None:
    for event_type in event_types:
        match(event_type)


CONTENDERS = ("reference", "cython", "python", "linear")


@pytest.mark.parametrize("scenario", ["distinct", "repeated"])
@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("size", SIZES)
def test_match_rate(benchmark: Any, size: int, contender: str, scenario: str) -> None:
    data = corpus(size)
    event_types = data.event_types if scenario == "distinct" else data.repeated
    cached = scenario == "repeated"
    match: Callable[[str], object]
    if contender == "reference":
        match = reference(event_types)
    elif contender == "cython":
        if _ctrie is None:
            pytest.skip("the compiled trie is not installed")
        match = trie(_ctrie, data.patterns, cached)
    elif contender == "python":
        match = trie(_pytrie, data.patterns, cached)
    else:
        match = linear_scan(data.patterns)
        event_types = event_types[:LINEAR_EVENTS]
    run_all(match, event_types)  # warm up: caches and branch predictors, as in steady traffic
    rounds = 3 if contender == "linear" else 15
    # The tries' targets are ratios to the reference: time it in turn with them.
    # Each side first runs a pass untimed, so that each is timed warm, as when
    # it runs on its own, and not in the caches the other one just filled.
    in_turn = InTurn(len(event_types)) if contender in ("cython", "python") else None
    lookup = reference(event_types)

    def reference_round() -> None:
        if in_turn is not None:
            run_all(lookup, event_types)
            in_turn.time(lambda: run_all(lookup, event_types))
            run_all(match, event_types)

    benchmark.group = f"{size:,} patterns, {scenario}"
    benchmark.pedantic(run_all, args=(match, event_types), setup=reference_round, rounds=rounds)
    record(
        "Matches per second",
        f"{size:>7,} patterns, {scenario}",
        contender,
        len(event_types),
        benchmark,
        reference=in_turn,
    )


def verdicts(figures: list[Figure]) -> list[str]:
    """The issue's targets, as ratios measured in this run."""
    found = {
        (f.group.split(" patterns")[0].strip(), f.group.rsplit(" ", 1)[1], f.contender): f
        for f in figures
        if f.table == "Matches per second"
    }

    def ratio(size: int, scenario: str, contender: str, base: str = "reference") -> float | None:
        key = f"{size:,}"
        top, bottom = found.get((key, scenario, contender)), found.get((key, scenario, base))
        if top is None:
            return None
        if base == "reference":
            return top.ratio(bottom)  # to the reference timed in turn with it, where it was
        return top.rate / bottom.rate if bottom else None

    lines = ["Targets (ratios from this run):"]

    def check(label: str, value: float | None, target: float) -> None:
        if value is None:
            lines.append(f"  {label}: not measured in this run")
        else:
            verdict = "met" if value >= target else "NOT met"
            lines.append(f"  {label}: {value:,.3f} (target >= {target:g}) {verdict}")

    check(
        "compiled, distinct, 1,000 patterns, vs reference",
        ratio(1_000, "distinct", "cython"),
        1 / 3,
    )
    check(
        "compiled, distinct, 100,000 patterns, vs reference",
        ratio(100_000, "distinct", "cython"),
        1 / 5,
    )
    for size in SIZES:
        check(
            f"compiled, repeated, {size:,} patterns, vs reference",
            ratio(size, "repeated", "cython"),
            0.8,
        )
    # The reference's work is the same whatever the number of patterns, so the
    # growth is the ratio's: each measured against the reference timed in turn.
    small, large = ratio(1_000, "distinct", "cython"), ratio(100_000, "distinct", "cython")
    check(
        "compiled, distinct: cost at 1,000 / cost at 100,000 (inverse growth)",
        large / small if small and large else None,
        0.5,
    )
    check(
        "compiled vs linear scan, 10,000 patterns",
        ratio(10_000, "distinct", "cython", "linear"),
        1000,
    )
    check(
        "python trie vs linear scan, 10,000 patterns",
        ratio(10_000, "distinct", "python", "linear"),
        100,
    )
    return lines


VERDICTS.append(verdicts)
