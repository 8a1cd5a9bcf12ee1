"""The matching contract, written once for both implementations.

An event type is ``domain:category:resource:action``: exactly four non-empty
segments of ASCII letters, digits, ``_``, ``-`` and ``.``. A pattern has the same
shape, and any of its segments may instead be ``*`` alone, matching exactly one
segment. The fast paths only decide *whether* input is valid; when it is not,
they call :func:`explain` here so that both implementations say the same thing.
"""

from __future__ import annotations

import re
import string

SEGMENTS = 4
SEPARATOR = ":"
WILDCARD = "*"
SEGMENT_CHARS = frozenset(string.ascii_letters + string.digits + "_-.")
SEGMENT_NAMES = ("domain", "category", "resource", "action")

_SEGMENT = r"[A-Za-z0-9_.\-]+"
EVENT_TYPE_RE = re.compile(rf"{_SEGMENT}(?::{_SEGMENT}){{3}}")
PATTERN_RE = re.compile(rf"(?:{_SEGMENT}|\*)(?::(?:{_SEGMENT}|\*)){{3}}")


class InvalidPattern(ValueError):
    """An event type or pattern that breaks the matching contract.

    The message names the input and what is wrong with it: which segment,
    which character.
    """


def explain(text: object, *, what: str) -> Exception:
    """Build the error for ``text``, which the caller already found invalid.

    ``what`` is ``"event type"`` or ``"pattern"``; only patterns may hold ``*``.
    A non-string gets a ``TypeError``, as Python does elsewhere.
    """
    if not isinstance(text, str):
        return TypeError(f"{what} must be a string, got {type(text).__name__}: {text!r}")
    if not text:
        return InvalidPattern(f"{what} is empty; expected domain:category:resource:action")
    segments = text.split(SEPARATOR)
    if len(segments) != SEGMENTS:
        return InvalidPattern(
            f"{what} {text!r} has {len(segments)} segment{'s' if len(segments) != 1 else ''}; "
            "expected exactly 4, domain:category:resource:action"
        )
    for position, segment in enumerate(segments):
        where = f"{what} {text!r}: segment {position + 1} ({SEGMENT_NAMES[position]})"
        if not segment:
            return InvalidPattern(f"{where} is empty")
        if segment == WILDCARD:
            if what == "pattern":
                continue
            return InvalidPattern(f"{where} is '*', which only patterns may use")
        for offset, char in enumerate(segment):
            if char in SEGMENT_CHARS:
                continue
            if char == WILDCARD:
                return InvalidPattern(
                    f"{where} {segment!r} has '*' at offset {offset}; "
                    "a wildcard must be a whole segment"
                    + ("" if what == "pattern" else ", and only patterns may use it")
                )
            return InvalidPattern(
                f"{where} {segment!r} has {char!r} at offset {offset}; "
                "allowed are ASCII letters, digits, '_', '-' and '.'"
            )
    # Unreachable for input the fast paths rejected; say so rather than guess.
    return InvalidPattern(f"{what} {text!r} was rejected but no fault was found")


def first_difference(pattern: str, event_type: str) -> int | None:
    """The first segment (0 to 3) at which ``event_type`` does not match
    ``pattern``, or None when it matches; both must be valid. For saying why a
    pattern refused an event: whether it does is the trie's to decide."""
    wanted_segments = validate_pattern(pattern).split(SEPARATOR)
    pairs = zip(wanted_segments, validate_event_type(event_type).split(SEPARATOR), strict=True)
    for position, (wanted, given) in enumerate(pairs):
        if wanted not in (WILDCARD, given):
            return position
    return None


def validate_event_type(text: str) -> str:
    """Return ``text`` if it is a valid event type, else raise :class:`InvalidPattern`."""
    if not isinstance(text, str) or EVENT_TYPE_RE.fullmatch(text) is None:
        raise explain(text, what="event type")
    return text


def validate_pattern(text: str) -> str:
    """Return ``text`` if it is a valid pattern, else raise :class:`InvalidPattern`."""
    if not isinstance(text, str) or PATTERN_RE.fullmatch(text) is None:
        raise explain(text, what="pattern")
    return text
