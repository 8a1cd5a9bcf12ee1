"""Invalid patterns and event types: rejected everywhere, with a message that says why.

Each case gives the text and the message that ``_contract.explain`` builds for it
after the leading ``"<what> <repr of text>"``, where ``<what>`` is ``pattern`` or
``event type``. The messages are matched from their start up to the end of what
matters (segment number and name, offending character and offset).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

import fastmatch
from fastmatch import InvalidPattern, _pytrie, validate_event_type, validate_pattern

IndexClass = type[_pytrie.PatternIndex[Any]]
Index = _pytrie.PatternIndex[Any]

SHIPPED = "orders:fulfillment:shipment:shipped"
ALLOWED = "; allowed are ASCII letters, digits, '_', '-' and '.'"
WHOLE = "; a wildcard must be a whole segment"

# (id, text, what the message says after "<what> <text!r>")
INVALID_ANYWHERE: list[tuple[str, str, str]] = [
    ("one segment", "orders", " has 1 segment; expected exactly 4"),
    ("two segments", "orders:fulfillment", " has 2 segments; expected exactly 4"),
    ("three segments", "orders:fulfillment:shipment", " has 3 segments; expected exactly 4"),
    ("five segments", SHIPPED + ":now", " has 5 segments; expected exactly 4"),
    ("nine segments", "a:b:c:d:e:f:g:h:i", " has 9 segments; expected exactly 4"),
    ("leading colon, five", ":" + SHIPPED, " has 5 segments; expected exactly 4"),
    ("trailing colon, five", SHIPPED + ":", " has 5 segments; expected exactly 4"),
    ("first segment empty", ":fulfillment:shipment:shipped", ": segment 1 (domain) is empty"),
    ("second segment empty", "orders::shipment:shipped", ": segment 2 (category) is empty"),
    ("third segment empty", "orders:fulfillment::shipped", ": segment 3 (resource) is empty"),
    ("last segment empty", "orders:fulfillment:shipment:", ": segment 4 (action) is empty"),
    ("only colons", ":::", ": segment 1 (domain) is empty"),
    ("three chars, two segments", "a:b", " has 2 segments; expected exactly 4"),
    ("three chars, one segment", "abc", " has 1 segment; expected exactly 4"),
    ("six chars, last empty", "a:b:c:", ": segment 4 (action) is empty"),
    ("six chars, middle empty", "a::c:d", ": segment 2 (category) is empty"),
    ("space only", " ", " has 1 segment; expected exactly 4"),
    ("newline only", "\n", " has 1 segment; expected exactly 4"),
    (
        "space",
        "orders:ful fillment:shipment:shipped",
        ": segment 2 (category) 'ful fillment' has ' ' at offset 3" + ALLOWED,
    ),
    (
        "leading space",
        " orders:fulfillment:shipment:shipped",
        ": segment 1 (domain) ' orders' has ' ' at offset 0" + ALLOWED,
    ),
    (
        "space before separator",
        "orders :fulfillment:shipment:shipped",
        ": segment 1 (domain) 'orders ' has ' ' at offset 6" + ALLOWED,
    ),
    (
        "tab",
        "orders:fulfillment:ship\tment:shipped",
        r": segment 3 (resource) 'ship\tment' has '\t' at offset 4" + ALLOWED,
    ),
    (
        "trailing newline",
        SHIPPED + "\n",
        r": segment 4 (action) 'shipped\n' has '\n' at offset 7" + ALLOWED,
    ),
    (
        "trailing CRLF",
        SHIPPED + "\r\n",
        r": segment 4 (action) 'shipped\r\n' has '\r' at offset 7" + ALLOWED,
    ),
    (
        "inner newline",
        "orders:fulfil\nment:shipment:shipped",
        r": segment 2 (category) 'fulfil\nment' has '\n' at offset 6" + ALLOWED,
    ),
    (
        "non-ASCII letter",
        "orders:fulfillmént:shipment:shipped",
        ": segment 2 (category) 'fulfillmént' has 'é' at offset 8" + ALLOWED,
    ),
    (
        "Cyrillic look-alike",
        "\u043erders:fulfillment:shipment:shipped",
        ": segment 1 (domain) '\u043erders' has '\u043e' at offset 0" + ALLOWED,
    ),
    (
        "fullwidth digit",
        "orders:fulfillment:shipment:v\uff12",
        ": segment 4 (action) 'v\uff12' has '\uff12' at offset 1" + ALLOWED,
    ),
    (
        "astral character",
        "orders:fulfillment:shipment:ok\U0001f4e6",
        ": segment 4 (action) 'ok\U0001f4e6' has '\U0001f4e6' at offset 2" + ALLOWED,
    ),
    (
        "NUL",
        "orders:fulfillment:shipment\x00:shipped",
        r": segment 3 (resource) 'shipment\x00' has '\x00' at offset 8" + ALLOWED,
    ),
    (
        "slash",
        "orders/fulfillment:shipment:shipped:now",
        ": segment 1 (domain) 'orders/fulfillment' has '/' at offset 6" + ALLOWED,
    ),
    (
        "MQTT multi-level wildcard",
        "orders:fulfillment:shipment:#",
        ": segment 4 (action) '#' has '#' at offset 0" + ALLOWED,
    ),
    (
        "MQTT single-level wildcard",
        "orders:+:shipment:shipped",
        ": segment 2 (category) '+' has '+' at offset 0" + ALLOWED,
    ),
    (
        "wildcard after letters",
        "orders:fulfillment:ship*:shipped",
        ": segment 3 (resource) 'ship*' has '*' at offset 4" + WHOLE,
    ),
    (
        "wildcard before letters",
        "orders:fulfillment:*ship:shipped",
        ": segment 3 (resource) '*ship' has '*' at offset 0" + WHOLE,
    ),
    (
        "double wildcard",
        "orders:**:shipment:shipped",
        ": segment 2 (category) '**' has '*' at offset 0" + WHOLE,
    ),
    (
        "wildcard then dot",
        "*.:fulfillment:shipment:shipped",
        ": segment 1 (domain) '*.' has '*' at offset 0" + WHOLE,
    ),
    (
        "many faults, the first reported",
        "o r d e r s:f u l:s h i p:s h i p p e d",
        ": segment 1 (domain) 'o r d e r s' has ' ' at offset 1" + ALLOWED,
    ),
    (
        "fault deep in a long segment",
        "orders:" + "x" * 100 + " :shipment:shipped",
        f": segment 2 (category) '{'x' * 100} ' has ' ' at offset 100" + ALLOWED,
    ),
    (
        "fault after a long segment",
        "x" * 70 + ":fulfillment:shipment:ship ped",
        ": segment 4 (action) 'ship ped' has ' ' at offset 4" + ALLOWED,
    ),
]

# Valid patterns that are not valid event types, and what an event type says of them.
WILDCARD_EVENT_TYPES: list[tuple[str, str, str]] = [
    ("first", "*:fulfillment:shipment:shipped", ": segment 1 (domain) is '*'"),
    ("second", "orders:*:shipment:shipped", ": segment 2 (category) is '*'"),
    ("third", "orders:fulfillment:*:shipped", ": segment 3 (resource) is '*'"),
    ("last", "orders:fulfillment:shipment:*", ": segment 4 (action) is '*'"),
    ("all", "*:*:*:*", ": segment 1 (domain) is '*'"),
]

NOT_STRINGS: list[object] = [None, SHIPPED.encode(), 42, 4.2, SHIPPED.split(":"), object()]


def ids(cases: list[tuple[str, str, str]]) -> list[str]:
    return [case[0] for case in cases]


def expected(what: str, text: str, fault: str) -> str:
    """A regular expression for the message's start: what, the text, the fault."""
    return "^" + re.escape(f"{what} {text!r}{fault}")


PATTERN_CALLS: dict[str, Callable[[Index, Any], object]] = {
    "add": lambda index, text: index.add(text, "new"),
    "remove": lambda index, text: index.remove(text, "key"),
}

EVENT_CALLS: dict[str, Callable[[Index, Any], object]] = {
    "match": lambda index, text: index.match(text),
    "match_many alone": lambda index, text: index.match_many([text]),
    "match_many among valid ones": lambda index, text: index.match_many([SHIPPED, "a:b:c:d", text, SHIPPED]),
}


def populated(index_cls: IndexClass) -> Index:
    index = index_cls()
    index.add("orders:*:*:*", "key")
    index.add("*:*:*:*", "all")
    return index


def assert_unchanged(index: Index) -> None:
    assert len(index) == 2
    assert sorted(index.match(SHIPPED)) == ["all", "key"]
    assert index.match("users:a:b:c") == ["all"]


def test_invalid_pattern_is_a_value_error() -> None:
    assert issubclass(InvalidPattern, ValueError)
    assert fastmatch.InvalidPattern is InvalidPattern
    with pytest.raises(ValueError, match="segment 2"):
        validate_pattern("a::c:d")
    with pytest.raises(ValueError, match="segment 2"):
        validate_event_type("a::c:d")


@pytest.mark.parametrize("call", PATTERN_CALLS.values(), ids=PATTERN_CALLS.keys())
@pytest.mark.parametrize(("case", "text", "fault"), INVALID_ANYWHERE, ids=ids(INVALID_ANYWHERE))
def test_index_rejects_invalid_pattern(
    index_cls: IndexClass,
    call: Callable[[Index, Any], object],
    case: str,
    text: str,
    fault: str,
) -> None:
    index = populated(index_cls)
    with pytest.raises(InvalidPattern, match=expected("pattern", text, fault)):
        call(index, text)
    assert_unchanged(index)


@pytest.mark.parametrize("call", EVENT_CALLS.values(), ids=EVENT_CALLS.keys())
@pytest.mark.parametrize(("case", "text", "fault"), INVALID_ANYWHERE, ids=ids(INVALID_ANYWHERE))
def test_index_rejects_invalid_event_type(
    index_cls: IndexClass,
    call: Callable[[Index, Any], object],
    case: str,
    text: str,
    fault: str,
) -> None:
    index = populated(index_cls)
    with pytest.raises(InvalidPattern, match=expected("event type", text, fault)):
        call(index, text)
    assert_unchanged(index)


@pytest.mark.parametrize(("case", "text", "fault"), INVALID_ANYWHERE, ids=ids(INVALID_ANYWHERE))
def test_validators_reject(case: str, text: str, fault: str) -> None:
    with pytest.raises(InvalidPattern, match=expected("pattern", text, fault)):
        validate_pattern(text)
    with pytest.raises(InvalidPattern, match=expected("event type", text, fault)):
        validate_event_type(text)


@pytest.mark.parametrize(
    "call",
    [*PATTERN_CALLS.values(), *EVENT_CALLS.values()],
    ids=[*PATTERN_CALLS.keys(), *EVENT_CALLS.keys()],
)
def test_index_rejects_empty_text(index_cls: IndexClass, call: Callable[[Index, Any], object]) -> None:
    index = populated(index_cls)
    with pytest.raises(InvalidPattern, match=r"^(pattern|event type) is empty; expected domain:"):
        call(index, "")
    assert_unchanged(index)


def test_validators_reject_empty_text() -> None:
    message = "is empty; expected domain:category:resource:action"
    with pytest.raises(InvalidPattern, match="^" + re.escape(f"pattern {message}")):
        validate_pattern("")
    with pytest.raises(InvalidPattern, match="^" + re.escape(f"event type {message}")):
        validate_event_type("")


@pytest.mark.parametrize("call", EVENT_CALLS.values(), ids=EVENT_CALLS.keys())
@pytest.mark.parametrize(("case", "text", "fault"), WILDCARD_EVENT_TYPES, ids=ids(WILDCARD_EVENT_TYPES))
def test_wildcard_rejected_in_event_type(
    index_cls: IndexClass,
    call: Callable[[Index, Any], object],
    case: str,
    text: str,
    fault: str,
) -> None:
    index = populated(index_cls)
    index.add(text, "wild")  # fine as a pattern
    assert validate_pattern(text) == text
    with pytest.raises(
        InvalidPattern, match=expected("event type", text, fault + ", which only patterns may use")
    ):
        call(index, text)
    with pytest.raises(InvalidPattern, match=expected("event type", text, fault)):
        validate_event_type(text)


@pytest.mark.parametrize("call", EVENT_CALLS.values(), ids=EVENT_CALLS.keys())
def test_partial_wildcard_in_event_type_says_only_patterns_may_use_it(
    index_cls: IndexClass, call: Callable[[Index, Any], object]
) -> None:
    text = "orders:fulfillment:ship*:shipped"
    fault = ": segment 3 (resource) 'ship*' has '*' at offset 4" + WHOLE
    with pytest.raises(
        InvalidPattern, match=expected("event type", text, fault + ", and only patterns may use it")
    ):
        call(populated(index_cls), text)


def test_same_text_different_fault_for_pattern_and_event_type(index_cls: IndexClass) -> None:
    # Six characters: as a pattern its last segment is empty; as an event type its
    # first segment is already wrong.
    index = index_cls()
    with pytest.raises(InvalidPattern, match=expected("pattern", "*:*:*:", ": segment 4 (action) is empty")):
        index.add("*:*:*:", "k")
    with pytest.raises(InvalidPattern, match=expected("event type", "*:*:*:", ": segment 1 (domain) is '*'")):
        index.match("*:*:*:")


@pytest.mark.parametrize("cache_size", [0, 1, 2, 4096])
def test_match_raises_after_valid_event_types_were_cached(index_cls: IndexClass, cache_size: int) -> None:
    index = index_cls(cache_size)
    index.add("*:*:*:*", "all")
    valid = [SHIPPED, "a:b:c:d", "orders:fulfillment:shipment:shipped_", "a:b:c:dd"]
    for event_type in valid * 2:
        assert index.match(event_type) == ["all"]
    for text in [
        SHIPPED + "\n",
        SHIPPED + " ",
        SHIPPED + ":",
        "orders:fulfillment:shipment:shippé",  # as long as SHIPPED
        "orders:fulfillment:shipment:shippe\u0301",
        "a:b:c:*",
        "a:b:c:é",
        "a:b:c",
        "a:b:c:d:e",
    ]:
        with pytest.raises(InvalidPattern, match=re.escape(repr(text))):
            index.match(text)
        with pytest.raises(InvalidPattern, match=re.escape(repr(text))):
            index.match_many([*valid, text])
    assert [index.match(event_type) for event_type in valid] == [["all"]] * len(valid)


class Name(str):
    __slots__ = ()


@pytest.mark.parametrize("cache_size", [0, 4096])
def test_str_subclass_with_invalid_content(index_cls: IndexClass, cache_size: int) -> None:
    index = index_cls(cache_size)
    index.add("*:*:*:*", "all")
    assert index.match(Name("a:b:c:d")) == ["all"]
    with pytest.raises(InvalidPattern, match=r"segment 4 \(action\) 'é' has 'é' at offset 0"):
        index.match(Name("a:b:c:é"))
    with pytest.raises(InvalidPattern, match=r"segment 2 \(category\) is empty"):
        index.add(Name("a::c:d"), "k")
    assert len(index) == 1


def type_message(what: str, value: object) -> str:
    return "^" + re.escape(f"{what} must be a string, got {type(value).__name__}: {value!r}")


@pytest.mark.parametrize("value", NOT_STRINGS, ids=lambda value: type(value).__name__)
def test_non_strings_are_type_errors(index_cls: IndexClass, value: object) -> None:
    index = populated(index_cls)
    for what, calls in [("pattern", PATTERN_CALLS), ("event type", EVENT_CALLS)]:
        for call in calls.values():
            with pytest.raises(TypeError, match=type_message(what, value)) as raised:
                call(index, value)
            assert not isinstance(raised.value, ValueError)
    assert_unchanged(index)


@pytest.mark.parametrize("value", NOT_STRINGS, ids=lambda value: type(value).__name__)
def test_validators_type_errors(value: object) -> None:
    with pytest.raises(TypeError, match=type_message("pattern", value)) as raised:
        validate_pattern(value)  # type: ignore[arg-type]
    assert not isinstance(raised.value, ValueError)
    with pytest.raises(TypeError, match=type_message("event type", value)):
        validate_event_type(value)  # type: ignore[arg-type]


def test_match_many_needs_an_iterable(index_cls: IndexClass) -> None:
    index = populated(index_cls)
    with pytest.raises(TypeError):
        index.match_many(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        index.match_many(42)  # type: ignore[arg-type]


def test_invalid_pattern_beats_key_error_on_remove(index_cls: IndexClass) -> None:
    # The pair is absent either way; the invalid text is what is reported.
    index = index_cls()
    with pytest.raises(InvalidPattern, match="segment 3"):
        index.remove("orders:fulfillment:ship*:shipped", "absent")
    with pytest.raises(InvalidPattern, match="has 5 segments"):
        index.remove("a:b:c:d:e", "absent")


def test_every_ascii_character_at_every_offset(index_cls: IndexClass) -> None:
    """The compiled trie scans sixteen bytes at a time and the last few apart:
    each byte, at each offset of a text longer than three such blocks, is classed
    as the contract says, whatever block or tail it falls in."""
    index = index_cls()
    index.add("*:*:*:*", "all")
    base = "orders-2:fulfillment.eu:shipment_item:shipped-late"  # 50 characters
    literal = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
    for offset, original in enumerate(base):
        if original == ":":
            continue
        for code in range(128):
            text = base[:offset] + chr(code) + base[offset + 1 :]
            if chr(code) in literal:
                assert index.match(text) == ["all"], text
            else:
                with pytest.raises(InvalidPattern):
                    index.match(text)
