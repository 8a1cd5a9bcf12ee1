"""Subscription filters on an event's payload: JSONPath (RFC 9535) conditions.

Paths are compiled once, when a subscription is validated, by jsonpath-rfc9535
in an environment whose ``match()`` and ``search()`` run on RE2 (see
``processor.iregexp``). A path is accepted only if evaluating it takes time
linear in the size of the event (``cost_problem``), so that no subscription,
however written, can hold the processor on one event.

Values are compared as JSON values, not as Python objects: ``1`` equals ``1.0``
but ``true`` does not equal ``1``, and ordering across types is simply false.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Literal

import jsonpath_rfc9535
from jsonpath_rfc9535 import JSONPathEnvironment, JSONPathQuery
from jsonpath_rfc9535.filter_expressions import (
    ComparisonExpression,
    Expression,
    FilterExpression,
    FunctionExtension,
    LogicalExpression,
    PrefixExpression,
    RelativeFilterQuery,
    RootFilterQuery,
    StringLiteral,
)
from jsonpath_rfc9535.function_extensions import ExpressionType, FilterFunction
from jsonpath_rfc9535.segments import JSONPathRecursiveDescentSegment
from jsonpath_rfc9535.selectors import FilterSelector

from processor.iregexp import InvalidIRegexp, compile_iregexp, matches, searches

MAX_EXPRESSION_LENGTH = 512
MAX_FAN_OUT = 64  # the product of the selectors of every segment of a path

Operator = Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "exists"]
OPERATORS: tuple[Operator, ...] = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "exists")


class _RegexFunction(FilterFunction):
    arg_types: ClassVar = [ExpressionType.VALUE, ExpressionType.VALUE]
    return_type: ClassVar = ExpressionType.LOGICAL

    def __init__(self, test: Callable[[object, object], bool]) -> None:
        self._test = test

    def __call__(self, text: object, pattern: object) -> bool:
        return self._test(text, pattern)


class _Environment(JSONPathEnvironment):
    """RFC 9535 as jsonpath-rfc9535 implements it, but for its regular expressions."""

    def setup_function_extensions(self) -> None:
        super().setup_function_extensions()
        self.function_extensions["match"] = _RegexFunction(matches)
        self.function_extensions["search"] = _RegexFunction(searches)


ENVIRONMENT = _Environment()


def compile_path(expression: str) -> JSONPathQuery:
    """Compile a JSONPath query, or raise ``ValueError`` saying what is wrong with it."""
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ValueError(f"is {len(expression)} characters long; at most {MAX_EXPRESSION_LENGTH} are allowed")
    try:
        query = ENVIRONMENT.compile(expression)
    except jsonpath_rfc9535.JSONPathError as error:
        raise ValueError(f"is not a valid RFC 9535 JSONPath query: {error}") from None
    except RecursionError:
        raise ValueError("is not a valid RFC 9535 JSONPath query: nested too deeply") from None
    problem = cost_problem(query) or pattern_problem(query)
    if problem is not None:
        raise ValueError(problem)
    return query


def cost_problem(query: JSONPathQuery) -> str | None:
    """Why evaluating ``query`` could take more than linear time in the size of
    the data, or None.

    Each node is visited a bounded number of times as long as the path
    descends (``..``) at most once, filters refer to the current node (``@``)
    only, and its selectors fan out by a bounded factor: a second descent
    revisits every subtree below the first, a root query (``$``) inside a
    filter runs once per candidate node, and ``[*,*]`` doubles the nodes at
    every segment."""
    descents, fan_out = 0, 1
    for inner in _queries(query):
        for segment in inner.segments:
            descents += isinstance(segment, JSONPathRecursiveDescentSegment)
            fan_out *= len(segment.selectors)
    if descents > 1:
        return f"descends (..) {descents} times; at most once, or its time grows with the square of the data"
    if fan_out > MAX_FAN_OUT:
        return f"its selectors multiply the nodes it visits by up to {fan_out}; at most {MAX_FAN_OUT}"
    for expression in _all_expressions(query):
        if isinstance(expression, RootFilterQuery):
            return f"refers to the root ($) inside a filter ({expression}); filters may refer to @ only"
    return None


def pattern_problem(query: JSONPathQuery) -> str | None:
    """Why a literal pattern of ``match()`` or ``search()`` cannot be run, or None."""
    for expression in _all_expressions(query):
        if isinstance(expression, FunctionExtension) and expression.name in ("match", "search"):
            pattern = expression.args[1]
            if isinstance(pattern, StringLiteral):
                try:
                    compile_iregexp(pattern.value, whole=expression.name == "match")
                except InvalidIRegexp as error:
                    return f"{expression.name}(): {error}"
    return None


def _queries(query: JSONPathQuery) -> Iterator[JSONPathQuery]:
    """``query`` and every query inside its filters, at any depth."""
    yield query
    for expression in _expressions(query):
        if isinstance(expression, RelativeFilterQuery | RootFilterQuery):
            yield from _queries(expression.query)


def _all_expressions(query: JSONPathQuery) -> Iterator[Expression]:
    for inner in _queries(query):
        yield from _expressions(inner)


def _expressions(query: JSONPathQuery) -> Iterator[Expression]:
    """Every expression of the filters of ``query``'s own segments, but not those
    of the queries inside them."""
    pending: list[Expression] = [
        selector.expression
        for segment in query.segments
        for selector in segment.selectors
        if isinstance(selector, FilterSelector)
    ]
    while pending:
        expression = pending.pop()
        yield expression
        if isinstance(expression, FilterExpression):
            pending.append(expression.expression)
        elif isinstance(expression, LogicalExpression | ComparisonExpression):
            pending += (expression.left, expression.right)
        elif isinstance(expression, PrefixExpression):
            pending.append(expression.right)
        elif isinstance(expression, FunctionExtension):
            pending += expression.args


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def json_equal(left: object, right: object) -> bool:
    """Equality of JSON values: numbers by value, booleans only with booleans."""
    if _is_number(left) and _is_number(right):
        return left == right
    if isinstance(left, bool) or isinstance(right, bool):
        return left is right
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(json_equal, left, right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(v, right[k]) for k, v in left.items())
    return type(left) is type(right) and left == right


def _ordered(compare: Callable[[Any, Any], bool]) -> Callable[[object, object], bool]:
    """Numbers compare with numbers, strings with strings; anything else is false."""

    def test(node: object, value: object) -> bool:
        if _is_number(node) and _is_number(value):
            return compare(node, value)
        if isinstance(node, str) and isinstance(value, str):
            return compare(node, value)
        return False

    return test


def _member(node: object, values: object) -> bool:
    return isinstance(values, list) and any(json_equal(node, v) for v in values)


TESTS: dict[Operator, Callable[[object, object], bool]] = {
    "eq": json_equal,
    "ne": lambda node, value: not json_equal(node, value),
    "gt": _ordered(lambda a, b: a > b),
    "gte": _ordered(lambda a, b: a >= b),
    "lt": _ordered(lambda a, b: a < b),
    "lte": _ordered(lambda a, b: a <= b),
    "in": _member,
    "nin": lambda node, values: not _member(node, values),
    "exists": lambda node, value: True,
}


def holds(query: JSONPathQuery, op: Operator, value: object, data: object) -> bool:
    """True when at least one node ``query`` selects in ``data`` satisfies ``op``."""
    test = TESTS[op]
    return any(test(node.value, value) for node in query.finditer(data))  # type: ignore[arg-type]
