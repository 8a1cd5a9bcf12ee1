"""Payload filters: which JSONPath queries are accepted (only those that run in
time linear in the event), and I-Regexp on RE2 for ``match()`` and ``search()``."""

from __future__ import annotations

import pytest

from processor import filters
from processor.filters import FilterBudgetExceeded, compile_path, select
from processor.iregexp import program, to_re2


def matches(text: str, pattern: str) -> bool:
    return program(pattern, whole=True).test(text)


def searches(text: str, pattern: str) -> bool:
    return program(pattern, whole=False).test(text)


def selects(path: str, data: object) -> bool:
    return bool(select(compile_path(path), data))


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
        ("$[?@.n == 1e400]", "a number too large for a double"),
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


def test_regex_functions_are_false_for_what_is_not_a_string() -> None:
    assert not selects("$[?match(@, '7')]", [7]) and selects("$[?match(@, '7')]", ["7"])
    assert not selects("$[?search(@, 'a')]", ["\ud800a"]), "a lone surrogate has no UTF-8 for RE2"
    with pytest.raises(ValueError, match="is not an I-Regexp"):
        compile_path("$[?search(@, '\ud800')]")  # a lone surrogate itself


def test_a_query_that_would_run_long_stops_at_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(filters, "MAX_STEPS", 10_000)
    wide = [[[n, n, n] for n in range(100)] for _ in range(100)]  # 40,000 nodes under three wildcards
    query = compile_path("$[*][*][*]")
    with pytest.raises(FilterBudgetExceeded, match="more than 10000 steps"):
        select(query, wide)
    assert len(select(query, wide[:10])) == 3_000, "within the budget: the usual answer"
    regex = compile_path("$[?search(@, '[ab]*a[ab]{999}c')]")  # 1,006 instructions
    with pytest.raises(FilterBudgetExceeded):
        select(regex, ["ab" * 10_000])  # refused before it runs: its worst case is over the budget
    assert select(regex, ["a" + "b" * 999 + "c"])
    assert select(query, [[[-1]]]) == [-1], "each evaluation starts with a whole budget"


def test_patterns_that_backtrack_exponentially_elsewhere_answer_correctly() -> None:
    assert not selects("$[?match(@, '(a|a)+')]", ["a" * 10_000 + "!"])
    assert selects("$[?match(@, '(a|a)+')]", ["a" * 10_000])
    assert selects("$[?search(@, '(x+x+)+y')]", ["x" * 5_000 + "y"])


def test_filters_keep_the_rfc_9535_semantics_of_the_other_functions() -> None:
    data = {"items": [{"qty": 1}, {"qty": 9, "tags": ["a", "b", "c"]}]}
    assert selects("$.items[?@.qty > 5]", data)
    assert not selects("$.items[?@.qty > 10]", data)
    assert selects("$.items[?length(@.tags) == 3]", data)
    assert selects("$.items[?count(@.*) == 2]", data)
    assert selects("$.items[?value(@.qty) == 1]", data)
