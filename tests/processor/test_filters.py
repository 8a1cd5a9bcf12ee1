"""Payload filters: which JSONPath queries are accepted (only those that run in
time linear in the event), and I-Regexp on RE2 for ``match()`` and ``search()``."""

from __future__ import annotations

import pytest

from processor.filters import compile_path, holds
from processor.iregexp import matches, searches, to_re2


def selects(path: str, data: object) -> bool:
    return holds(compile_path(path), "exists", None, data)


@pytest.mark.parametrize(
    "path",
    [
        "$..x",
        "$.items[?@.qty > 5]",
        "$[?@..x]",  # one descent, below disjoint children
        "$[?@[?@..y]]",
        "$..[?@.price < 10 && @.currency == 'EUR']",
        "$['a','b']['c','d']",
        "$[?count(@.*) > 2]",
        "$[?match(@.code, '[A-Z]{2}-[0-9]{4,12}')]",
    ],
)
def test_paths_that_run_in_linear_time_are_accepted(path: str) -> None:
    compile_path(path)


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("$..[?@..x]", "descends (..) 2 times"),
        ("$..a..b", "descends (..) 2 times"),
        ("$[?@[?@[?@..y]]]..z", "descends (..) 2 times"),
        ("$.a[?@.b > $.c]", "refers to the root ($) inside a filter"),
        ("$[?count($..*) > 1]", "refers to the root ($) inside a filter"),
        ("$[*,*][*,*][*,*][*,*][*,*][*,*][*,*]", "multiply the nodes it visits by up to 128"),
        ("$[?match(@, 'a(?=b)')]", "is not an I-Regexp"),
        ("$[?search(@, '[')]", "is not an I-Regexp"),
        ("$[?match(@, '\\\\d+')]", "is not an I-Regexp"),
        (
            "$[?match(@, 'a{1001}')]",
            "is refused by RE2, which runs patterns in linear time: invalid repetition size",
        ),
        (
            "$[?match(@, '" + "\\\\p{L}{99}" * 40 + "')]",
            "is refused by RE2, which runs patterns in linear time: pattern too large",
        ),
        ("$" + "[?(" * 150 + "true" + ")]" * 150, "at most 512"),
    ],
)
def test_paths_that_could_take_more_than_linear_time_are_refused_saying_why(path: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)").replace("$", r"\$")):
        compile_path(path)


def test_a_query_nested_too_deeply_to_parse_is_refused_not_crashed() -> None:
    with pytest.raises(ValueError, match="not a valid RFC 9535 JSONPath query: nested too deeply"):
        compile_path("$[?" + "!" * 500 + "@]")


def test_i_regexp_dots_anchors_and_classes_keep_their_meaning_on_re2() -> None:
    assert to_re2("a.b", whole=True) == r"\A(?:a[^\n\r]b)\z"
    assert to_re2(r"[.^$]\.^$", whole=False) == r"[.^$]\.\^\$"
    assert matches("abc", "a.c") and not matches("a\nc", "a.c") and not matches("xabc", "a.c")
    assert searches("xabcx", "a.c") and not searches("xa\rcx", "a.c")
    assert searches("cost: 5$", "5$") and not searches("5", "5$"), "$ is an ordinary character"
    assert matches("é", r"\p{L}") and not matches("1", r"\p{L}")
    assert matches("b", "[^a]") and not matches("a", "[^a]")
    assert matches("ab" * 6, "(ab){6}") and matches("a" * 12, "a{10,12}") and not matches("a" * 9, "a{10,}")


def test_regex_functions_are_false_for_what_is_not_a_string_or_a_pattern() -> None:
    assert not matches(7, "7") and not matches("7", 7)
    assert not searches("a", "(") and not searches("a", "a(?=b)"), "an invalid pattern from the data"
    assert not searches("\ud800a", "a"), "a lone surrogate has no UTF-8 for RE2"
    data = [{"text": "ab", "pattern": "a."}]
    assert selects("$[?match(@.text, @.pattern)]", data), "a pattern from the data"
    assert not searches("a" * 2000, "a" * 1025), "a pattern too long to be a filter's is not compiled"


def test_patterns_that_backtrack_exponentially_elsewhere_answer_correctly() -> None:
    path = compile_path("$[?match(@, '(a|a)+')]")
    assert not holds(path, "exists", None, ["a" * 10_000 + "!"])
    assert holds(path, "exists", None, ["a" * 10_000])
    assert selects("$[?search(@, '(x+x+)+y')]", ["x" * 5_000 + "y"])


def test_filters_keep_the_rfc_9535_semantics_of_the_other_functions() -> None:
    data = {"items": [{"qty": 1}, {"qty": 9, "tags": ["a", "b", "c"]}]}
    assert selects("$.items[?@.qty > 5]", data)
    assert not selects("$.items[?@.qty > 10]", data)
    assert selects("$.items[?length(@.tags) == 3]", data)
    assert selects("$.items[?count(@.*) == 2]", data)
    assert selects("$.items[?value(@.qty) == 1]", data)
