"""I-Regexp (RFC 9485), the regular expressions of JSONPath's ``match()`` and
``search()``, run by RE2 in time linear in the text.

The backtracking engines (``re``, ``regex``) take exponential time on patterns
such as ``(a|a)+$``: one event could hold the processor for hours. RE2 cannot
backtrack, and I-Regexp was made to map onto it (RFC 9485 §5): a dot outside a
character class becomes ``[^\\n\\r]``, ``^`` and ``$`` (ordinary characters in
I-Regexp) are escaped, and a whole-string match is anchored at both ends.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import re2
from iregexp_check import check

_OPTIONS = re2.Options()
_OPTIONS.never_capture = True  # only whether it matches is asked; no groups to keep
_OPTIONS.max_mem = 8 << 20  # RE2's default, said here: memory per compiled pattern is bounded
_OPTIONS.log_errors = False  # patterns may come from events: a bad one is an answer, not a log line
# iregexp-check 0.1.4 refuses counts of more than one digit (a{10}), which RFC 9485
# allows; the same pattern with one-digit counts has the same syntax.
_COUNT = re.compile(r"\{[0-9]+(,[0-9]*)?\}")
# Longer patterns can only come from an event's data (a filter's own are at most
# 512 characters): they are false, never compiled, and never kept in the cache.
MAX_PATTERN = 1024


class InvalidIRegexp(ValueError):
    """A pattern that is not an I-Regexp, or that RE2 refuses."""


def to_re2(pattern: str, *, whole: bool) -> str:
    """``pattern`` (an I-Regexp) in RE2's syntax (RFC 9485 §5.4)."""
    parts: list[str] = []
    escaped = in_class = False
    for char in pattern:
        translated = char
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == ".":
            translated = r"[^\n\r]"
        elif char in "^$":  # ordinary characters in I-Regexp, anchors in RE2
            translated = "\\" + char
        parts.append(translated)
    body = "".join(parts)
    return rf"\A(?:{body})\z" if whole else body


def compile_iregexp(pattern: str, *, whole: bool) -> Any:
    """The RE2 program of ``pattern``; ``InvalidIRegexp`` says why there is none."""
    if not check(pattern) and not check(_COUNT.sub(_one_digit, pattern)):
        raise InvalidIRegexp(f"{pattern!r} is not an I-Regexp (RFC 9485)")
    try:
        return re2.compile(to_re2(pattern, whole=whole), _OPTIONS)
    except re2.error as error:
        reason = (
            error.args[0].decode(errors="replace")
            if error.args and isinstance(error.args[0], bytes)
            else error
        )
        raise InvalidIRegexp(
            f"{pattern!r} is refused by RE2, which runs patterns in linear time: {reason}"
        ) from None


def _one_digit(count: re.Match[str]) -> str:
    return "{1,1}" if count[1] and count[1] != "," else "{1,}" if count[1] else "{1}"


@lru_cache(maxsize=1024)
def _program(pattern: str, whole: bool) -> Any | None:
    """Compiled once per pattern: literal patterns recur in every event. None
    for a pattern that cannot be compiled (one taken from an event's data)."""
    try:
        return compile_iregexp(pattern, whole=whole)
    except InvalidIRegexp:
        return None


def _test(text: object, pattern: object, whole: bool) -> bool:
    # RFC 9535 §2.4.6/2.4.7: anything but a string and a valid pattern is simply false.
    if not isinstance(text, str) or not isinstance(pattern, str) or len(pattern) > MAX_PATTERN:
        return False
    program = _program(pattern, whole)
    if program is None:
        return False
    try:
        return program.search(text) is not None
    except UnicodeEncodeError:  # a lone surrogate (JSON allows "\ud800"): no UTF-8 for RE2
        return False


def matches(text: object, pattern: object) -> bool:
    """``match()``: the whole of ``text`` matches ``pattern``."""
    return _test(text, pattern, True)


def searches(text: object, pattern: object) -> bool:
    """``search()``: some part of ``text`` matches ``pattern``."""
    return _test(text, pattern, False)
