"""Property tests: the compiled trie, the Python trie and a naive matcher agree.

Segments come mostly from a small alphabet, so that random patterns and random
event types actually match one another; now and then a random valid segment,
up to 40 characters, brings in the compiled trie's long-segment paths.
"""

from __future__ import annotations

import string
from collections.abc import Hashable, Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from fastmatch import InvalidPattern, _pytrie, validate_event_type, validate_pattern

IndexClass = type[_pytrie.PatternIndex[Any]]
Index = _pytrie.PatternIndex[Any]
Pair = tuple[str, Hashable]

SEGMENT_CHARS = string.ascii_letters + string.digits + "_-."
SMALL_SEGMENTS = ["a", "b", "ab", "orders", "x.y", "A", "a_segment_longer_than_16_bytes"]

PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

random_segments = st.text(alphabet=SEGMENT_CHARS, min_size=1, max_size=40)
small_segments = st.sampled_from(SMALL_SEGMENTS)
# About one segment in eight is a random one (one_of picks each branch alike).
segments = st.one_of(*[small_segments] * 7, random_segments)
# About one pattern segment in three is a wildcard.
pattern_segments = st.one_of(*[small_segments] * 7, random_segments, *[st.just("*")] * 4)
patterns = st.lists(pattern_segments, min_size=4, max_size=4).map(":".join)
event_types = st.lists(segments, min_size=4, max_size=4).map(":".join)
keys: st.SearchStrategy[Hashable] = st.one_of(
    st.integers(0, 5), st.sampled_from(["k", "key", ("tuple", 1), None])
)
pairs_strategy = st.lists(st.tuples(patterns, keys), max_size=40)


def reference_match(pairs: Iterable[Pair], event_type: str) -> set[Hashable]:
    """The contract, naively: every segment of the pattern is ``*`` or equal."""
    event = event_type.split(":")
    found: set[Hashable] = set()
    for pattern, key in pairs:
        segs = pattern.split(":")
        if len(segs) == len(event) and all(p in ("*", e) for p, e in zip(segs, event, strict=True)):
            found.add(key)
    return found


def is_valid(text: str, *, pattern: bool) -> bool:
    """The contract's validity rule, naively."""
    segs = text.split(":")
    return len(segs) == 4 and all(
        (pattern and seg == "*") or (seg != "" and all(c in SEGMENT_CHARS for c in seg)) for seg in segs
    )


@st.composite
def filled_in(draw: st.DrawFn, pattern: str) -> str:
    """An event type that ``pattern`` matches: each ``*`` replaced by a segment."""
    return ":".join(draw(segments) if seg == "*" else seg for seg in pattern.split(":"))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Pair], list[str]]:
    """Pairs to add, and event types to match: random ones and ones some pattern matches."""
    pairs = draw(pairs_strategy)
    events = draw(st.lists(event_types, max_size=10))
    for pattern, _ in pairs[:8]:
        events.append(draw(filled_in(pattern)))
    return pairs, draw(st.permutations(events))


def as_set(keys: list[Any]) -> set[Any]:
    assert isinstance(keys, list)
    assert len(keys) == len(set(keys)), f"a key came back more than once: {keys!r}"
    return set(keys)


@pytest.mark.parametrize("cache_size", [4096, 0, 2])
@PROPERTY_SETTINGS
@given(scenario=scenarios())
def test_implementations_agree_with_reference(
    compiled_cls: IndexClass, cache_size: int, scenario: tuple[list[Pair], list[str]]
) -> None:
    pairs, events = scenario
    indexes = [compiled_cls(cache_size), _pytrie.PatternIndex(cache_size)]
    for index in indexes:
        for pattern, key in pairs:
            index.add(pattern, key)
        assert len(index) == len(set(pairs))
    for event_type in events + events:  # the second time possibly from the cache
        expected = reference_match(pairs, event_type)
        for index in indexes:
            assert as_set(index.match(event_type)) == expected
    for index in indexes:
        batch = index.match_many(events)
        assert [as_set(result) for result in batch] == [reference_match(pairs, e) for e in events]


@PROPERTY_SETTINGS
@given(scenario=scenarios(), data=st.data())
def test_implementations_agree_after_removals(
    compiled_cls: IndexClass, scenario: tuple[list[Pair], list[str]], data: st.DataObject
) -> None:
    pairs, events = scenario
    unique = list(dict.fromkeys(pairs))
    removed = data.draw(st.lists(st.sampled_from(unique), unique=True) if unique else st.just([]))
    kept = [pair for pair in unique if pair not in removed]
    for index in [compiled_cls(), _pytrie.PatternIndex()]:
        for pattern, key in pairs:
            index.add(pattern, key)
        for event_type in events:  # fill the cache before changing the index
            index.match(event_type)
        for pattern, key in removed:
            index.remove(pattern, key)
        assert len(index) == len(kept)
        for event_type in events:
            assert as_set(index.match(event_type)) == reference_match(kept, event_type)


@PROPERTY_SETTINGS
@given(pattern=patterns, event_type=event_types)
def test_generated_texts_are_valid(pattern: str, event_type: str) -> None:
    assert validate_pattern(pattern) == pattern
    assert validate_event_type(event_type) == event_type
    assert validate_pattern(event_type) == event_type


def outcome(call: Any, *args: Any) -> tuple[str, str]:
    try:
        call(*args)
    except (InvalidPattern, TypeError) as exc:
        return type(exc).__name__, str(exc)
    return "ok", ""


# Texts mostly near the valid ones: separators, wildcards, and a few wrong characters.
near_texts = st.lists(st.sampled_from(list("ab.::**  \n\té_")), max_size=14).map("".join) | st.lists(
    st.sampled_from(["a", "*", "", "ab*", "a b", "é", "x" * 20]), min_size=1, max_size=6
).map(":".join)


@PROPERTY_SETTINGS
@given(text=near_texts)
def test_validation_agrees_everywhere(compiled_cls: IndexClass, text: str) -> None:
    """Each entry point accepts exactly the valid texts and words every rejection alike."""
    as_pattern = {
        "validate_pattern": outcome(validate_pattern, text),
        "compiled add": outcome(compiled_cls().add, text, "k"),
        "python add": outcome(_pytrie.PatternIndex().add, text, "k"),
    }
    as_event = {
        "validate_event_type": outcome(validate_event_type, text),
        "compiled match": outcome(compiled_cls().match, text),
        "python match": outcome(_pytrie.PatternIndex().match, text),
    }
    for results, pattern in [(as_pattern, True), (as_event, False)]:
        assert len(set(results.values())) == 1, results
        verdict = next(iter(results.values()))
        assert (verdict[0] == "ok") == is_valid(text, pattern=pattern), (text, verdict)
        if verdict[0] != "ok":
            assert verdict[0] == "InvalidPattern"
            assert repr(text) in verdict[1] or text == ""


class IndexMachine(RuleBasedStateMachine):
    """Both implementations, driven by the same steps, checked against a set of pairs.

    The cache holds two results, so that matching evicts all the time.
    """

    def __init__(self) -> None:
        super().__init__()
        from fastmatch import _ctrie  # noqa: PLC0415  (the test has checked it imports)

        self.indexes: list[Index] = [_ctrie.PatternIndex(2), _pytrie.PatternIndex(2)]  # type: ignore[list-item]
        self.model: set[Pair] = set()

    def check(self, event_type: str) -> None:
        expected = reference_match(self.model, event_type)
        for index in self.indexes:
            assert as_set(index.match(event_type)) == expected

    @rule(pattern=patterns, key=keys)
    def add(self, pattern: str, key: Hashable) -> None:
        for index in self.indexes:
            index.add(pattern, key)
        self.model.add((pattern, key))

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def remove_present(self, data: st.DataObject) -> None:
        pattern, key = data.draw(st.sampled_from(sorted(self.model, key=repr)))
        for index in self.indexes:
            index.remove(pattern, key)
        self.model.remove((pattern, key))

    @rule(pattern=patterns, key=keys)
    def remove_any(self, pattern: str, key: Hashable) -> None:
        if (pattern, key) in self.model:
            for index in self.indexes:
                index.remove(pattern, key)
            self.model.remove((pattern, key))
        else:
            for index in self.indexes:
                with pytest.raises(KeyError):
                    index.remove(pattern, key)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def remove_absent_key_of_present_pattern(self, data: st.DataObject) -> None:
        pattern, _ = data.draw(st.sampled_from(sorted(self.model, key=repr)))
        key = ("absent", len(self.model))
        for index in self.indexes:
            with pytest.raises(KeyError):
                index.remove(pattern, key)

    @rule(event_type=event_types)
    def match(self, event_type: str) -> None:
        self.check(event_type)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def match_a_present_pattern(self, data: st.DataObject) -> None:
        pattern, _ = data.draw(st.sampled_from(sorted(self.model, key=repr)))
        self.check(data.draw(filled_in(pattern)))

    @rule(events=st.lists(event_types, max_size=5))
    def match_many(self, events: list[str]) -> None:
        expected = [reference_match(self.model, e) for e in events]
        for index in self.indexes:
            assert [as_set(result) for result in index.match_many(events)] == expected

    @invariant()
    def lengths(self) -> None:
        for index in self.indexes:
            assert len(index) == len(self.model)

    @invariant()
    def every_pattern_still_matches(self) -> None:
        # Each pattern, with its wildcards filled in, matches what the model says.
        for pattern in sorted({pattern for pattern, _ in self.model})[:10]:
            self.check(pattern.replace("*", "a"))


def test_state_machine(compiled_cls: IndexClass) -> None:
    run_state_machine_as_test(
        IndexMachine,
        settings=settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]),
    )
