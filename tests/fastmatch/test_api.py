"""The behaviour of ``PatternIndex``, checked against both implementations."""

from __future__ import annotations

import itertools
import random
from collections.abc import Hashable, Iterable
from typing import Any

import pytest

import fastmatch
from fastmatch import _pytrie

IndexClass = type[_pytrie.PatternIndex[Any]]
Index = _pytrie.PatternIndex[Any]

SHIPPED = "orders:fulfillment:shipment:shipped"


def matched(index: Index, event_type: str) -> set[Any]:
    """``index.match`` as a set, after checking that it is a list holding each key once."""
    keys = index.match(event_type)
    assert isinstance(keys, list)
    assert len(keys) == len(set(keys)), f"a key came back more than once: {keys!r}"
    return set(keys)


def reference(pairs: Iterable[tuple[str, Hashable]], event_type: str) -> set[Hashable]:
    """What the contract says: the keys of every pattern whose segments are each
    ``*`` or equal to the event type's."""
    event = event_type.split(":")
    return {
        key
        for pattern, key in pairs
        if all(p in ("*", e) for p, e in zip(pattern.split(":"), event, strict=True))
    }


def fresh(text: str) -> str:
    """An equal string that is a different object from ``text``."""
    copy = "".join(list(text))
    assert copy == text
    assert copy is not text
    return copy


# The spec's table: which patterns match SHIPPED, and an event type each does not match.
SPEC_TABLE = [
    ("orders:fulfillment:shipment:shipped", "orders:fulfillment:shipment:delivered"),
    ("orders:fulfillment:shipment:*", "orders:fulfillment:parcel:shipped"),
    ("orders:fulfillment:*:*", "orders:billing:shipment:shipped"),
    ("orders:*:*:*", "payments:fulfillment:shipment:shipped"),
    ("*:*:*:shipped", "orders:fulfillment:shipment:delivered"),
    ("*:*:shipment:shipped", "orders:fulfillment:parcel:shipped"),
    ("*:fulfillment:*:*", "orders:billing:shipment:shipped"),
    ("orders:*:shipment:*", "orders:fulfillment:parcel:shipped"),
    ("*:fulfillment:*:shipped", "orders:fulfillment:shipment:lost"),
    ("orders:*:*:shipped", "orders:fulfillment:shipment:returned"),
]


@pytest.mark.parametrize(("pattern", "other"), SPEC_TABLE)
def test_spec_table_pattern_matches_and_misses(index_cls: IndexClass, pattern: str, other: str) -> None:
    index = index_cls()
    index.add(pattern, "key")
    assert index.match(SHIPPED) == ["key"]
    assert index.match(other) == []
    assert len(index) == 1


def test_match_all_wildcards_matches_any_event_type(index_cls: IndexClass) -> None:
    index = index_cls()
    index.add("*:*:*:*", "all")
    for event_type in [SHIPPED, "a:b:c:d", "A.1:b-2:c_3:D", "x" * 70 + ":y:z:w"]:
        assert index.match(event_type) == ["all"]


def test_the_wildcard_chain_is_found_again_whenever_the_trie_changes(index_cls: IndexClass) -> None:
    """Every match walks the root's chain of wildcards ("*", "*:*", ...); a trie
    that grows, shrinks or loses part of that chain must not be walked as before."""
    index = index_cls(cache_size=0)
    index.add("*:*:*:*", "all")
    index.add("*:*:*:x", "x")
    assert matched(index, "a:b:c:x") == {"all", "x"}
    for n in range(3000):  # the table grows, and its entries move, several times
        index.add(f"d{n}:c:r:a", n)
    assert matched(index, "a:b:c:x") == {"all", "x"}
    assert matched(index, "d7:c:r:a") == {"all", 7}
    index.remove("*:*:*:*", "all")
    assert matched(index, "a:b:c:x") == {"x"}
    index.remove("*:*:*:x", "x")
    assert matched(index, "a:b:c:x") == set()
    for n in range(3000):
        index.remove(f"d{n}:c:r:a", n)
    index.add("*:b:*:*", "b")
    assert matched(index, "a:b:c:x") == {"b"}
    assert matched(index, "a:c:c:x") == set()


def test_spec_table_in_one_index(index_cls: IndexClass) -> None:
    index = index_cls()
    pairs = [(pattern, f"key{n}") for n, (pattern, _) in enumerate(SPEC_TABLE)]
    pairs.append(("*:*:*:*", "all"))
    pairs.append(("payments:*:*:*", "payments"))
    for pattern, key in pairs:
        index.add(pattern, key)
    assert len(index) == len(pairs)
    assert matched(index, SHIPPED) == {key for _, key in pairs} - {"payments"}
    for _, other in SPEC_TABLE:
        assert matched(index, other) == reference(pairs, other)
    assert matched(index, "payments:card:charge:failed") == {"all", "payments"}
    assert matched(index, "users:a:b:c") == {"all"}


def test_no_patterns_no_match(index_cls: IndexClass) -> None:
    index = index_cls()
    assert len(index) == 0
    assert index.match(SHIPPED) == []


def test_segments_are_compared_whole(index_cls: IndexClass) -> None:
    index = index_cls()
    index.add("order:*:*:*", "order")
    index.add("orders:*:*:*", "orders")
    index.add("ordersx:*:*:*", "ordersx")
    assert index.match("orders:a:b:c") == ["orders"]
    assert index.match("order:a:b:c") == ["order"]
    assert index.match("ordersx:a:b:c") == ["ordersx"]
    assert index.match("orde:a:b:c") == []
    assert index.match("ordersxy:a:b:c") == []


def test_segment_boundaries_matter(index_cls: IndexClass) -> None:
    # The same characters split differently are different event types.
    index = index_cls()
    index.add("ab:c:d:e", "first")
    index.add("a:bc:d:e", "second")
    index.add("a:b:cd:e", "third")
    assert index.match("ab:c:d:e") == ["first"]
    assert index.match("a:bc:d:e") == ["second"]
    assert index.match("a:b:cd:e") == ["third"]
    assert index.match("a:b:c:de") == []


def test_punctuation_and_digits_are_literal(index_cls: IndexClass) -> None:
    index = index_cls()
    index.add("a.b:c-d:e_f:G9", "dotted")
    assert index.match("a.b:c-d:e_f:G9") == ["dotted"]
    assert index.match("a_b:c-d:e_f:G9") == []
    assert index.match("a.b:c_d:e_f:G9") == []
    assert index.match("a.b:c-d:e-f:G9") == []
    assert index.match("a.b:c-d:e_f:G8") == []


def test_case_sensitive(index_cls: IndexClass) -> None:
    index = index_cls()
    index.add("Orders:*:*:*", "upper")
    index.add("orders:*:*:Shipped", "action")
    assert index.match("Orders:a:b:c") == ["upper"]
    assert index.match("orders:a:b:c") == []
    assert index.match("ORDERS:a:b:c") == []
    assert index.match("orders:a:b:Shipped") == ["action"]
    assert index.match("orders:a:b:shipped") == []
    assert index.match("orders:a:b:SHIPPED") == []


def test_every_wildcard_combination(index_cls: IndexClass) -> None:
    # Sixteen patterns all match one event type: the widest a match can branch.
    index = index_cls()
    segments = ["orders", "fulfillment", "shipment", "shipped"]
    masks = list(itertools.product((False, True), repeat=4))
    for mask in masks:
        pattern = ":".join("*" if star else seg for star, seg in zip(mask, segments, strict=True))
        index.add(pattern, mask)
    assert len(index) == 16
    assert matched(index, SHIPPED) == set(masks)
    # Changing the action leaves the eight patterns with '*' there.
    assert matched(index, "orders:fulfillment:shipment:lost") == {m for m in masks if m[3]}
    assert matched(index, "a:b:c:d") == {(True, True, True, True)}


def test_one_key_on_every_wildcard_combination_comes_back_once(index_cls: IndexClass) -> None:
    index = index_cls()
    segments = ["orders", "fulfillment", "shipment", "shipped"]
    for mask in itertools.product((False, True), repeat=4):
        pattern = ":".join("*" if star else seg for star, seg in zip(mask, segments, strict=True))
        index.add(pattern, "same")
    assert len(index) == 16
    assert index.match(SHIPPED) == ["same"]


def test_many_keys_per_pattern(index_cls: IndexClass) -> None:
    index = index_cls()
    keys = [f"subscriber-{n}" for n in range(25)]
    for key in keys:
        index.add("orders:*:*:*", key)
    assert len(index) == 25
    assert matched(index, SHIPPED) == set(keys)
    index.remove("orders:*:*:*", "subscriber-7")
    assert len(index) == 24
    assert matched(index, SHIPPED) == set(keys) - {"subscriber-7"}


def test_two_keys_on_one_pattern(index_cls: IndexClass) -> None:
    index = index_cls()
    index.add("orders:*:*:*", "a")
    index.add("orders:*:*:*", "b")
    assert matched(index, SHIPPED) == {"a", "b"}
    index.remove("orders:*:*:*", "a")
    assert index.match(SHIPPED) == ["b"]


def test_key_on_several_matching_patterns_returned_once(index_cls: IndexClass) -> None:
    index = index_cls()
    index.add("orders:*:*:*", "k")
    index.add("*:*:*:shipped", "k")
    index.add(SHIPPED, "k")
    index.add("orders:*:*:*", "other")
    assert len(index) == 4
    assert matched(index, SHIPPED) == {"k", "other"}
    assert index.match("payments:x:y:shipped") == ["k"]
    index.remove("orders:*:*:*", "k")
    assert matched(index, SHIPPED) == {"k", "other"}
    index.remove(SHIPPED, "k")
    assert matched(index, SHIPPED) == {"k", "other"}
    index.remove("*:*:*:shipped", "k")
    assert index.match(SHIPPED) == ["other"]
    assert index.match("payments:x:y:shipped") == []


def test_duplicate_add_is_a_no_op(index_cls: IndexClass) -> None:
    index = index_cls()
    index.add("orders:*:*:*", "k")
    index.add("orders:*:*:*", "k")
    index.add(fresh("orders:*:*:*"), fresh("k"))
    assert len(index) == 1
    assert index.match(SHIPPED) == ["k"]
    # Not reference-counted: one remove takes the pair away.
    index.remove("orders:*:*:*", "k")
    assert len(index) == 0
    assert index.match(SHIPPED) == []
    with pytest.raises(KeyError):
        index.remove("orders:*:*:*", "k")


def test_equal_keys_are_the_same_key(index_cls: IndexClass) -> None:
    index = index_cls()
    first = ("team", "-".join(["ops", "eu"]))
    second = ("team", "-".join(["ops", "eu"]))
    assert first == second
    assert first is not second
    index.add("orders:*:*:*", first)
    index.add("orders:*:*:*", second)
    assert len(index) == 1
    index.remove("orders:*:*:*", second)
    assert len(index) == 0
    assert index.match(SHIPPED) == []


def test_remove_then_match(index_cls: IndexClass) -> None:
    index = index_cls()
    index.add("orders:*:*:*", "orders")
    index.add("*:*:shipment:*", "shipments")
    assert matched(index, SHIPPED) == {"orders", "shipments"}
    index.remove("*:*:shipment:*", "shipments")
    assert index.match(SHIPPED) == ["orders"]
    assert index.match("users:x:shipment:y") == []
    index.remove("orders:*:*:*", "orders")
    assert index.match(SHIPPED) == []
    assert len(index) == 0


def test_remove_unknown_pattern(index_cls: IndexClass) -> None:
    index = index_cls()
    with pytest.raises(KeyError):
        index.remove("orders:*:*:*", "k")
    index.add("orders:fulfillment:shipment:*", "k")
    # Patterns sharing a prefix with the one present, or extending its path differently.
    for pattern in [
        "orders:fulfillment:shipment:shipped",
        "orders:fulfillment:*:*",
        "orders:fulfillment:parcel:*",
        "orders:*:shipment:*",
        "*:fulfillment:shipment:*",
        "payments:fulfillment:shipment:*",
    ]:
        with pytest.raises(KeyError):
            index.remove(pattern, "k")
    assert len(index) == 1
    assert index.match(SHIPPED) == ["k"]


def test_remove_unknown_key(index_cls: IndexClass) -> None:
    index = index_cls()
    index.add("orders:*:*:*", "k")
    for key in ["K", "k2", 0, None, ("k",)]:
        with pytest.raises(KeyError):
            index.remove("orders:*:*:*", key)
    assert len(index) == 1
    assert index.match(SHIPPED) == ["k"]


def test_remove_key_that_is_on_a_different_pattern(index_cls: IndexClass) -> None:
    index = index_cls()
    index.add("orders:*:*:*", "k")
    index.add("orders:fulfillment:*:*", "other")
    with pytest.raises(KeyError):
        index.remove("orders:fulfillment:*:*", "k")
    with pytest.raises(KeyError):
        index.remove("orders:*:*:*", "other")
    assert len(index) == 2
    assert matched(index, SHIPPED) == {"k", "other"}


def test_remove_twice(index_cls: IndexClass) -> None:
    index = index_cls()
    index.add("orders:*:*:*", "a")
    index.add("orders:*:*:*", "b")
    index.remove("orders:*:*:*", "a")
    with pytest.raises(KeyError):
        index.remove("orders:*:*:*", "a")
    assert len(index) == 1
    assert index.match(SHIPPED) == ["b"]


def test_removing_one_branch_keeps_its_siblings(index_cls: IndexClass) -> None:
    index = index_cls()
    index.add("a:b:c:d", "d")
    index.add("a:b:c:e", "e")
    index.add("a:b:*:*", "star")
    index.add("a:x:c:d", "x")
    index.remove("a:b:c:d", "d")
    assert index.match("a:b:c:d") == ["star"]
    assert matched(index, "a:b:c:e") == {"e", "star"}
    assert index.match("a:x:c:d") == ["x"]
    index.remove("a:b:*:*", "star")
    assert index.match("a:b:c:d") == []
    assert index.match("a:b:c:e") == ["e"]
    assert index.match("a:b:q:r") == []
    assert index.match("a:x:c:d") == ["x"]
    assert len(index) == 2


def test_remove_everything_then_add_again(index_cls: IndexClass) -> None:
    index = index_cls()
    patterns = [
        "orders:fulfillment:shipment:shipped",
        "orders:fulfillment:shipment:*",
        "orders:fulfillment:*:*",
        "orders:*:*:*",
        "*:*:*:*",
        "*:*:*:shipped",
        "orders:*:shipment:*",
        "x" * 40 + ":*:" + "y" * 17 + ":*",
    ]
    events = [SHIPPED, "orders:a:b:c", "users:a:b:shipped", "x" * 40 + ":a:" + "y" * 17 + ":b"]
    for round_ in range(3):
        for n, pattern in enumerate(patterns):
            index.add(pattern, (round_, n))
            index.add(pattern, "shared")
        assert len(index) == 2 * len(patterns)
        pairs = [(p, (round_, n)) for n, p in enumerate(patterns)]
        for event_type in events:
            assert matched(index, event_type) == reference(pairs, event_type) | {"shared"}
        for n, pattern in reversed(list(enumerate(patterns))):
            index.remove(pattern, "shared")
            index.remove(pattern, (round_, n))
        assert len(index) == 0
        for event_type in events:
            assert index.match(event_type) == []


class Opaque:
    """A hashable key that equals only itself."""


KEY_CASES: dict[str, Hashable] = {
    "str": "key",
    "empty str": "",
    "non-ASCII str": "ключ",
    "zero": 0,
    "int": 7,
    "negative int": -1,
    "big int": 2**70,
    "float": 2.5,
    "bytes": b"bytes",
    "tuple": ("tuple", 1),
    "empty tuple": (),
    "nested tuple": ((),),
    "None": None,
    "empty frozenset": frozenset(),
    "frozenset": frozenset({"a", "b"}),
    "object": Opaque(),
}
HASHABLE_KEYS = list(KEY_CASES.values())


@pytest.mark.parametrize("key", HASHABLE_KEYS, ids=KEY_CASES.keys())
def test_key_types_round_trip(index_cls: IndexClass, key: Hashable) -> None:
    index = index_cls()
    index.add("orders:*:*:*", key)
    result = index.match(SHIPPED)
    # A lone tuple key must come back whole, not as its items.
    assert result == [key]
    assert type(result[0]) is type(key)
    assert index.match_many([SHIPPED, "users:a:b:c"]) == [[key], []]
    index.remove("orders:*:*:*", key)
    assert len(index) == 0
    assert index.match(SHIPPED) == []


def test_key_types_together(index_cls: IndexClass) -> None:
    index = index_cls()
    for key in HASHABLE_KEYS:
        index.add("orders:*:*:*", key)
    assert len(index) == len(HASHABLE_KEYS)
    assert matched(index, SHIPPED) == set(HASHABLE_KEYS)
    # The same keys spread over several matching patterns, each key once.
    for n, key in enumerate(HASHABLE_KEYS):
        index.add(["*:*:*:shipped", "*:fulfillment:*:*", SHIPPED][n % 3], key)
    assert matched(index, SHIPPED) == set(HASHABLE_KEYS)
    for key in HASHABLE_KEYS[::2]:
        index.remove("orders:*:*:*", key)
    assert matched(index, SHIPPED) == set(HASHABLE_KEYS)
    assert matched(index, "orders:a:b:c") == set(HASHABLE_KEYS[1::2])


@pytest.mark.parametrize("key", [[], {}, {1}, ["a", "b"]], ids=["list", "dict", "set", "list2"])
def test_unhashable_key_leaves_index_unchanged(index_cls: IndexClass, key: object) -> None:
    index = index_cls()
    with pytest.raises(TypeError):
        index.add("orders:*:*:*", key)
    assert len(index) == 0
    assert index.match(SHIPPED) == []
    index.add("orders:*:*:*", "k")
    assert index.match(SHIPPED) == ["k"]
    for pattern in ["orders:*:*:*", "orders:fulfillment:shipment:*", "*:*:*:*"]:
        with pytest.raises(TypeError):
            index.add(pattern, key)
    assert len(index) == 1
    assert index.match(SHIPPED) == ["k"]
    assert index.match("users:a:b:c") == []
    index.remove("orders:*:*:*", "k")
    assert len(index) == 0
    assert index.match(SHIPPED) == []


def test_match_many(index_cls: IndexClass) -> None:
    index = index_cls()
    index.add("orders:*:*:*", "orders")
    index.add("*:*:*:shipped", "shipped")
    events = [SHIPPED, "users:a:b:c", "payments:a:b:shipped", SHIPPED, "orders:a:b:c"]
    results = index.match_many(events)
    assert isinstance(results, list)
    assert len(results) == len(events)
    assert all(isinstance(result, list) for result in results)
    assert [set(result) for result in results] == [
        {"orders", "shipped"},
        set(),
        {"shipped"},
        {"orders", "shipped"},
        {"orders"},
    ]
    assert [set(result) for result in results] == [matched(index, e) for e in events]


def test_match_many_takes_any_iterable(index_cls: IndexClass) -> None:
    index = index_cls()
    index.add("orders:*:*:*", "k")
    assert index.match_many([]) == []
    assert index.match_many(()) == []
    assert index.match_many(iter([SHIPPED, "users:a:b:c"])) == [["k"], []]
    assert index.match_many(e for e in ("users:a:b:c", SHIPPED)) == [[], ["k"]]
    assert index.match_many((SHIPPED,)) == [["k"]]


def test_cache_size_argument(index_cls: IndexClass) -> None:
    for size in [0, 1, 2, 3, 4096, 100_000]:
        index = index_cls(size)
        index.add("orders:*:*:*", "k")
        assert index.match(SHIPPED) == ["k"]
        assert index_cls(cache_size=size).match(SHIPPED) == []
    with pytest.raises(ValueError, match="cache_size"):
        index_cls(-1)
    with pytest.raises(ValueError, match="cache_size"):
        index_cls(cache_size=-4096)


@pytest.mark.parametrize("cache_size", [0, 1, 2, 3, 4096])
def test_cache_follows_add_and_remove(index_cls: IndexClass, cache_size: int) -> None:
    index = index_cls(cache_size)
    index.add("payments:*:*:*", "payments")
    for _ in range(2):  # the second time from the cache, if there is one
        assert index.match(SHIPPED) == []
    index.add("orders:*:*:*", "orders")
    for _ in range(2):
        assert index.match(SHIPPED) == ["orders"]
    index.add("*:*:*:shipped", "shipped")
    for _ in range(2):
        assert matched(index, SHIPPED) == {"orders", "shipped"}
    index.add("orders:*:*:*", "also")
    for _ in range(2):
        assert matched(index, SHIPPED) == {"orders", "shipped", "also"}
    index.remove("orders:*:*:*", "orders")
    for _ in range(2):
        assert matched(index, SHIPPED) == {"shipped", "also"}
    index.remove("orders:*:*:*", "also")
    index.remove("*:*:*:shipped", "shipped")
    for _ in range(2):
        assert index.match(SHIPPED) == []
    assert index.match("payments:a:b:c") == ["payments"]


@pytest.mark.parametrize("cache_size", [0, 1, 2, 4096])
def test_cache_follows_changes_for_equal_event_type_objects(index_cls: IndexClass, cache_size: int) -> None:
    index = index_cls(cache_size)
    assert index.match(SHIPPED) == []
    index.add("orders:*:*:*", "k")
    assert index.match(fresh(SHIPPED)) == ["k"]
    assert index.match(SHIPPED) == ["k"]
    index.remove(fresh("orders:*:*:*"), "k")
    assert index.match(fresh(SHIPPED)) == []
    assert index.match(SHIPPED) == []


@pytest.mark.parametrize("cache_size", [0, 1, 2, 4096])
def test_failed_changes_keep_cached_results(index_cls: IndexClass, cache_size: int) -> None:
    index = index_cls(cache_size)
    index.add("orders:*:*:*", "k")
    assert index.match(SHIPPED) == ["k"]
    with pytest.raises(KeyError):
        index.remove("orders:*:*:*", "missing")
    with pytest.raises(TypeError):
        index.add("orders:*:*:*", [])
    index.add("orders:*:*:*", "k")  # duplicate
    assert index.match(SHIPPED) == ["k"]
    assert len(index) == 1


@pytest.mark.parametrize("cache_size", [0, 1, 2, 4096])
def test_returned_lists_are_the_callers(index_cls: IndexClass, cache_size: int) -> None:
    index = index_cls(cache_size)
    index.add("orders:*:*:*", "a")
    first = index.match(SHIPPED)
    first.append("junk")
    assert index.match(SHIPPED) == ["a"]
    index.add("orders:*:*:*", "b")
    second = index.match(SHIPPED)
    second.clear()
    assert matched(index, SHIPPED) == {"a", "b"}
    index.add("*:*:*:shipped", "c")
    third = index.match(SHIPPED)
    third.pop()
    assert matched(index, SHIPPED) == {"a", "b", "c"}
    batch = index.match_many([SHIPPED, SHIPPED])
    batch[0].clear()
    assert [set(result) for result in index.match_many([SHIPPED])] == [{"a", "b", "c"}]


@pytest.mark.parametrize("cache_size", [0, 1, 2, 3, 5])
def test_tiny_cache_with_many_event_types(index_cls: IndexClass, cache_size: int) -> None:
    rng = random.Random(cache_size)
    index = index_cls(cache_size)
    pairs: list[tuple[str, Hashable]] = [("*:*:*:*", "all")]
    for d in range(6):
        pairs.append((f"d{d}:*:*:*", d))
        for a in range(0, 6, 2):
            pairs.append((f"d{d}:*:*:a{a}", (d, a)))
            pairs.append((f"*:c{d}:*:a{a}", ("c", d, a)))
    for pattern, key in pairs:
        index.add(pattern, key)
    events = [f"d{d}:c{c}:r:a{a}" for d in range(7) for c in range(7) for a in range(6)]
    for round_ in range(3):
        batch = [fresh(event_type) for event_type in events] + events
        rng.shuffle(batch)
        for event_type in batch:
            assert matched(index, event_type) == reference(pairs, event_type)
        # Change the index between rounds: the cache must not answer with old results.
        removed = pairs.pop(rng.randrange(len(pairs)))
        index.remove(*removed)
        added = (f"d{round_}:c{round_}:r:*", ("new", round_))
        pairs.append(added)
        index.add(*added)
        assert len(index) == len(pairs)
    for event_type in events:
        assert matched(index, event_type) == reference(pairs, event_type)


# Segments around the compiled trie's limits: 16 bytes live in a node, longer ones
# apart; segments are hashed eight bytes at a time.
LONG_LENGTHS = [7, 8, 9, 15, 16, 17, 24, 63, 64, 65, 200]


def test_long_segments_at_every_position(index_cls: IndexClass) -> None:
    index = index_cls()
    pairs: list[tuple[str, Hashable]] = []
    for length in LONG_LENGTHS:
        segment = "s" * length
        for position in range(4):
            parts = ["*"] * 4
            parts[position] = segment
            pairs.append((":".join(parts), (length, position)))
    for pattern, key in pairs:
        index.add(pattern, key)
    for length in LONG_LENGTHS:
        for position in range(4):
            parts = ["e"] * 4
            parts[position] = "s" * length
            event_type = ":".join(parts)
            # Only the pattern of that very length at that position: "s" * 16 is not "s" * 17.
            assert index.match(event_type) == [(length, position)]
    assert index.match("e:e:e:e") == []
    assert index.match("s" * 18 + ":e:e:e") == []


@pytest.mark.parametrize("length", LONG_LENGTHS)
def test_long_segments_differing_in_one_byte(index_cls: IndexClass, length: int) -> None:
    index = index_cls()
    segment = "".join(chr(ord("a") + n % 26) for n in range(length))
    pattern = f"{segment}:fulfillment:{segment}:*"
    index.add(pattern, "k")
    assert index.match(f"{segment}:fulfillment:{segment}:shipped") == ["k"]
    assert index.match(fresh(f"{segment}:fulfillment:{segment}:shipped")) == ["k"]
    for offset in sorted({0, 1, length // 2, length - 9, length - 8, length - 2, length - 1}):
        if offset < 0:
            continue
        altered = segment[:offset] + "Z" + segment[offset + 1 :]
        assert index.match(f"{altered}:fulfillment:{segment}:shipped") == []
        assert index.match(f"{segment}:fulfillment:{altered}:shipped") == []
    assert index.match(f"{segment}x:fulfillment:{segment}:shipped") == []
    assert index.match(f"{segment[:-1]}:fulfillment:{segment}:shipped") == []
    # A literal pattern with the altered segment is a different node.
    altered = segment[:-1] + "Z"
    index.add(f"{altered}:fulfillment:{segment}:*", "altered")
    assert index.match(f"{segment}:fulfillment:{segment}:shipped") == ["k"]
    assert index.match(f"{altered}:fulfillment:{segment}:shipped") == ["altered"]
    index.remove(pattern, "k")
    assert index.match(f"{segment}:fulfillment:{segment}:shipped") == []
    assert index.match(f"{altered}:fulfillment:{segment}:shipped") == ["altered"]


def test_long_segments_sharing_a_long_prefix(index_cls: IndexClass) -> None:
    index = index_cls()
    prefix = "p" * 16
    names = [prefix, prefix + "a", prefix + "b", prefix + "ab", "p" * 64 + "a", "p" * 64 + "b"]
    for name in names:
        index.add(f"orders:{name}:*:*", name)
    for name in names:
        assert index.match(f"orders:{name}:x:y") == [name]
    assert index.match("orders:" + "p" * 15 + ":x:y") == []
    assert index.match("orders:" + "p" * 64 + ":x:y") == []
    for name in names[::2]:
        index.remove(f"orders:{name}:*:*", name)
    for n, name in enumerate(names):
        assert index.match(f"orders:{name}:x:y") == ([] if n % 2 == 0 else [name])


def test_many_long_segment_patterns_through_growth_and_deletion(index_cls: IndexClass) -> None:
    rng = random.Random(2)
    index = index_cls()
    pairs = [(f"{'d' * 20}{n % 3}:{'c' * (n % 40 + 1)}:{'r' * 17}{n}:*", n) for n in range(600)]
    for pattern, key in pairs:
        index.add(pattern, key)
    rng.shuffle(pairs)
    for pattern, key in pairs[:300]:
        index.remove(pattern, key)
    kept = pairs[300:]
    assert len(index) == len(kept)
    for pattern, key in pairs:
        event_type = pattern.replace("*", "act")
        assert index.match(event_type) == ([key] if (pattern, key) in kept else [])


def test_equal_strings_that_are_different_objects(index_cls: IndexClass) -> None:
    index = index_cls()
    pattern = ":".join(["orders", "*", "ship" + "ment".lower(), "*"])
    index.add(pattern, "k")
    literal = "orders:fulfillment:shipment:shipped"
    built = fresh(literal)
    assert index.match(built) == ["k"]
    assert index.match(literal) == ["k"]
    assert index.match(fresh(literal)) == ["k"]
    assert index.match_many([fresh(literal), literal]) == [["k"], ["k"]]
    # Added with one string object, removed with another.
    index.remove(fresh("orders:*:shipment:*"), "k")
    assert len(index) == 0
    assert index.match(built) == []
    assert index.match(literal) == []


class Name(str):
    """A str subclass, as callers may use for typed names."""

    __slots__ = ()

    def describe(self) -> str:
        return f"name {self}"


def test_str_subclasses(index_cls: IndexClass) -> None:
    index = index_cls()
    index.add(Name("orders:*:shipment:*"), "k")
    assert index.match(Name(SHIPPED)) == ["k"]
    assert index.match(SHIPPED) == ["k"]
    assert index.match(Name(SHIPPED)) == ["k"]
    assert index.match(Name("orders:a:b:c")) == []
    assert index.match_many([Name(SHIPPED), SHIPPED]) == [["k"], ["k"]]
    index.add("orders:*:shipment:*", "k")  # the same pair, as a plain str
    assert len(index) == 1
    index.remove("orders:*:shipment:*", "k")
    assert index.match(Name(SHIPPED)) == []
    index.add("*:*:*:*", Name("key"))
    assert index.match(Name(SHIPPED)) == ["key"]
    assert fastmatch.validate_pattern(Name("orders:*:*:*")) == "orders:*:*:*"
    assert fastmatch.validate_event_type(Name(SHIPPED)) == SHIPPED


def test_non_ascii_keys(index_cls: IndexClass) -> None:
    index = index_cls()
    index.add("orders:*:*:*", "подписка")
    index.add("orders:*:*:*", "訂閱")
    assert matched(index, SHIPPED) == {"подписка", "訂閱"}


def sixteen_patterns(pattern: str) -> list[str]:
    """Every pattern that could match the event type ``pattern`` with its ``*``s
    filled in: each segment literal or ``*``."""
    segments = pattern.split(":")
    return [
        ":".join("*" if star else seg for star, seg in zip(mask, segments, strict=True))
        for mask in itertools.product((False, True), repeat=4)
    ]


def reference_by_lookup(model: dict[str, set[Hashable]], event_type: str) -> set[Hashable]:
    """The naive answer for a big index: look up each of the sixteen patterns that
    could match ``event_type``."""
    found: set[Hashable] = set()
    for pattern in sixteen_patterns(event_type):
        found |= model.get(pattern, set())
    return found


@pytest.mark.parametrize("seed", [0, 1])
def test_five_thousand_patterns_sharing_prefixes(index_cls: IndexClass, seed: int) -> None:
    rng = random.Random(seed)
    index = index_cls()
    pairs: list[tuple[str, Hashable]] = []
    for n in range(5000):
        domain = f"domain{n % 5}"
        category = "*" if n % 7 == 0 else f"category{n % 11}"
        resource = f"resource{n % 60}" + ("_long_resource_name" if n % 3 == 0 else "")
        action = "*" if n % 4 == 0 else f"action{n}"
        pairs.append((f"{domain}:{category}:{resource}:{action}", n))
        if n % 97 == 0:
            pairs.append((f"{domain}:{category}:{resource}:{action}", "shared"))
    model: dict[str, set[Hashable]] = {}
    for pattern, key in pairs:
        index.add(pattern, key)
        model.setdefault(pattern, set()).add(key)
    assert len(index) == len(pairs)

    events = set()
    for pattern, _ in pairs:
        events.add(pattern.replace("*", "zz"))
        events.add(pattern.replace("*", "category3"))
        events.add(pattern.replace("*", "action42"))
    events.add("domain9:category1:resource1:action1")

    def check() -> None:
        for event_type in events:
            assert matched(index, event_type) == reference_by_lookup(model, event_type)

    check()
    rng.shuffle(pairs)
    for pattern, key in pairs[: len(pairs) // 2]:
        index.remove(pattern, key)
        model[pattern].discard(key)
    kept = pairs[len(pairs) // 2 :]
    assert len(index) == len(kept)
    check()
    # Growing again after all those deletions.
    for n in range(2000):
        pattern = f"domain{n % 5}:*:resource{n % 60}:again{n}"
        index.add(pattern, ("again", n))
        model.setdefault(pattern, set()).add(("again", n))
        events.add(pattern.replace("*", "zz"))
    assert len(index) == len(kept) + 2000
    check()
    for pattern, keys in model.items():
        for key in keys:
            index.remove(pattern, key)
    model.clear()
    assert len(index) == 0
    check()


def test_public_names() -> None:
    assert fastmatch.IMPLEMENTATION in ("cython", "python")
    assert issubclass(fastmatch.InvalidPattern, ValueError)
    assert fastmatch.validate_pattern("orders:*:*:*") == "orders:*:*:*"
    assert fastmatch.validate_pattern("*:*:*:*") == "*:*:*:*"
    assert fastmatch.validate_event_type(SHIPPED) == SHIPPED
    assert fastmatch.validate_event_type("a.b:c-d:e_f:G9") == "a.b:c-d:e_f:G9"
    index = fastmatch.PatternIndex[str]()
    index.add("orders:*:*:*", "k")
    assert index.match(SHIPPED) == ["k"]
    assert fastmatch.first_difference("orders:*:*:shipped", SHIPPED) is None
    assert fastmatch.first_difference("orders:*:*:packed", SHIPPED) == 3
    assert fastmatch.SEGMENT_NAMES[3] == "action"
    assert set(fastmatch.__all__) == {
        "IMPLEMENTATION",
        "SEGMENT_NAMES",
        "InvalidPattern",
        "PatternIndex",
        "first_difference",
        "validate_event_type",
        "validate_pattern",
    }


class Meddler:
    """A key whose __hash__ grows the very index it is added to, once."""

    def __init__(self, index: Any) -> None:
        self.index: Any = index

    def __hash__(self) -> int:
        index, self.index = self.index, None
        if index is not None:
            for n in range(2000):
                index.add(f"grow:{n}:*:*", n)
        return 7

    def __eq__(self, other: object) -> bool:
        return other is self


def test_a_key_that_changes_the_index_while_hashed_is_still_added_right(index_cls: IndexClass) -> None:
    index = index_cls()
    key = Meddler(index)
    index.add("orders:*:*:*", key)
    assert len(index) == 2001
    assert index.match("orders:a:b:c") == [key]
    assert index.match("grow:5:b:c") == [5]
    index.remove("orders:*:*:*", key)
    assert index.match("orders:a:b:c") == []
    assert len(index) == 2000
