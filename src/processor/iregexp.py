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
# Memory of a program and its DFA: a cache of 512 holds at most 512 MiB. RE2 takes
# its slower path (NFA) where the DFA would need more.
_OPTIONS.max_mem = 1 << 20
_OPTIONS.log_errors = False  # a refused pattern is an answer to its writer, not a log line
# iregexp-check 0.1.4 refuses counts of more than one digit (a{10}), which RFC 9485
# allows; the same pattern with one-digit counts has the same syntax.
_COUNT = re.compile(r"\{[0-9]+(,[0-9]*)?\}")


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


class Program:
    """A compiled pattern: ``test`` says whether it matches (all of a text for
    ``match()``, some part of it for ``search()``); ``size`` is its number of
    RE2 instructions, which bounds the work per character of RE2's slowest path."""

    def __init__(self, compiled: Any) -> None:
        self._compiled = compiled
        self.size: int = compiled.programsize

    def test(self, text: str) -> bool:
        try:
            return self._compiled.search(text) is not None
        except UnicodeEncodeError:  # a lone surrogate (JSON allows "\ud800"): no UTF-8 for RE2
            return False


@lru_cache(maxsize=512)
def program(pattern: str, *, whole: bool) -> Program:
    """The program of ``pattern``, compiled once: patterns recur in every event.
    ``InvalidIRegexp`` says why there is none."""
    try:
        valid = check(pattern) or check(_COUNT.sub(_one_digit, pattern))
    except UnicodeEncodeError:  # a lone surrogate: not a pattern
        valid = False
    if not valid:
        raise InvalidIRegexp(f"{pattern!r} is not an I-Regexp (RFC 9485)")
    try:
        return Program(re2.compile(to_re2(pattern, whole=whole), _OPTIONS))
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
