"""Subscription filters' JSONPath (RFC 9535) queries: compiled safely, run on a budget.

Paths are compiled once, when a subscription is validated, by jsonpath-rfc9535
in an environment whose ``match()`` and ``search()`` run on RE2 (see
``processor.iregexp``). No subscription, however written, may hold the
processor on one event, and two things see to it:

- paths whose time could grow faster than the event are refused
  (``cost_problem``), as are patterns that are not literals or whose program
  is large;
- every evaluation of a query on an event has a budget of ``MAX_STEPS``
  steps (a node a path selects along the way, or a regular expression's worst
  case on a text, counted before it runs); past it, the evaluation raises
  ``FilterBudgetExceeded``, which fails the pairs of the subscriptions that
  needed it, and those alone.

The filters themselves (``EventFilters``: ``source``, ``metadata`` and
``payload`` conditions with their operators) are defined here too, as the
data contract has them; what each means on an event is ``processor.predicates``'.

Values are compared as JSON values, not as Python objects (``json_equal``):
``1`` equals ``1.0`` but ``true`` does not equal ``1``. What conditions make
of the values a query selects is ``processor.predicates``' business.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Self

import jsonpath_rfc9535
from jsonpath_rfc9535 import JSONPathEnvironment, JSONPathNode, JSONPathQuery
from jsonpath_rfc9535.filter_expressions import (
    ComparisonExpression,
    Expression,
    FilterExpression,
    FilterExpressionLiteral,
    FunctionExtension,
    LogicalExpression,
    PrefixExpression,
    RelativeFilterQuery,
    RootFilterQuery,
    StringLiteral,
)
from jsonpath_rfc9535.function_extensions import ExpressionType, FilterFunction
from jsonpath_rfc9535.segments import JSONPathChildSegment, JSONPathRecursiveDescentSegment, JSONPathSegment
from jsonpath_rfc9535.selectors import FilterSelector, IndexSelector, NameSelector, WildcardSelector
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    StrictStr,
    Tag,
    WithJsonSchema,
    model_validator,
)

from processor.iregexp import InvalidIRegexp, Program, program
from processor.json_values import Json, JsonObject

MAX_EXPRESSION_LENGTH = 512
MAX_FAN_OUT = 64  # the product of the selectors of every segment of a path
MAX_STEPS = 1_000_000  # of one filter's evaluation on one event: a second or two at worst
MAX_PROGRAM = 2_000  # RE2 instructions of a pattern; a character costs up to that many
REGEX_STEP = 1_000  # instructions of RE2's slowest path (its NFA) that count as one step


class FilterBudgetExceeded(Exception):
    """A filter's evaluation on an event did more than ``MAX_STEPS`` steps."""


class _Budget(threading.local):
    left = MAX_STEPS


_BUDGET = _Budget()


def _spend(steps: int) -> None:
    _BUDGET.left -= steps
    if _BUDGET.left < 0:
        raise FilterBudgetExceeded(f"the filter did more than {MAX_STEPS} steps on this event")


class _Metered:
    """A segment of a compiled path whose every node counts against the budget."""

    def __init__(self, segment: JSONPathSegment) -> None:
        self._segment = segment

    def resolve(self, nodes: Iterable[JSONPathNode]) -> Iterator[JSONPathNode]:
        budget = _BUDGET
        for node in self._segment.resolve(nodes):
            budget.left -= 1  # _spend(1), spelled out: every node of every filter passes here
            if budget.left < 0:
                _spend(0)
            yield node

    def __str__(self) -> str:
        return str(self._segment)


def _segments(query: JSONPathQuery) -> list[JSONPathSegment]:
    """The segments of a compiled query as jsonpath-rfc9535 made them."""
    return [segment._segment if isinstance(segment, _Metered) else segment for segment in query.segments]


Operator = Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "exists"]
OPERATORS: tuple[Operator, ...] = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "exists")


class _RegexFunction(FilterFunction):
    """``match()`` (``whole``) or ``search()``: false for anything but a string and
    a valid pattern (RFC 9535 §2.4.6-7); its worst case is paid before it runs."""

    arg_types: ClassVar = [ExpressionType.VALUE, ExpressionType.VALUE]
    return_type: ClassVar = ExpressionType.LOGICAL

    def __init__(self, whole: bool) -> None:
        self._whole = whole

    def __call__(self, text: object, pattern: object) -> bool:
        if not isinstance(text, str) or not isinstance(pattern, str):
            return False
        compiled = _compiled(pattern, self._whole)
        if compiled is None:
            return False
        _spend(1 + len(text) * compiled.size // REGEX_STEP)
        return compiled.test(text)


def _compiled(pattern: str, whole: bool) -> Program | None:
    try:
        return program(pattern, whole=whole)
    except InvalidIRegexp:
        return None


class _Environment(JSONPathEnvironment):
    """RFC 9535 as jsonpath-rfc9535 implements it, but for its regular expressions."""

    def setup_function_extensions(self) -> None:
        super().setup_function_extensions()
        self.function_extensions["match"] = _RegexFunction(whole=True)
        self.function_extensions["search"] = _RegexFunction(whole=False)


ENVIRONMENT = _Environment()


@functools.lru_cache(maxsize=4096)
def compile_path(expression: str) -> JSONPathQuery:
    """Compile a JSONPath query, or raise ``ValueError`` saying what is wrong with it.

    Cached: a subscription's paths are compiled when it is validated, and the
    matcher asks again for the same ones when it indexes it; many subscriptions
    share a path."""
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ValueError(f"is {len(expression)} characters long; at most {MAX_EXPRESSION_LENGTH} are allowed")
    try:
        query = ENVIRONMENT.compile(expression)
    except jsonpath_rfc9535.JSONPathError as error:
        raise ValueError(f"is not a valid RFC 9535 JSONPath query: {error}") from None
    except RecursionError:
        raise ValueError("is not a valid RFC 9535 JSONPath query: nested too deeply") from None
    except OverflowError:  # jsonpath-rfc9535 reads 1e400 as int(float("1e400"))
        raise ValueError("is not a valid RFC 9535 JSONPath query: a number too large for a double") from None
    problem = cost_problem(query) or pattern_problem(query)
    if problem is not None:
        raise ValueError(problem)
    for inner in list(_queries(query)):  # each query inside its filters too
        inner.segments = tuple(_Metered(segment) for segment in inner.segments)  # type: ignore[misc]
    return query


def cost_problem(query: JSONPathQuery) -> str | None:
    """Why evaluating ``query`` could take time that grows faster than the
    data, by its shape alone, or None.

    A second descent (``..``) walks again every subtree below the first, a
    root query (``$``) inside a filter runs once per candidate node, and
    ``[*,*]`` doubles the nodes at every segment. What these rules let pass
    can still be slow on some data (a filter query of many segments under a
    descent, say): the budget of each evaluation bounds that."""
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
    """Why a pattern of ``match()`` or ``search()`` cannot be run, or None. Only
    literal patterns: one taken from the event would be compiled, unchecked,
    for every event."""
    for expression in _all_expressions(query):
        if isinstance(expression, FunctionExtension) and expression.name in ("match", "search"):
            pattern = expression.args[1]
            if not isinstance(pattern, StringLiteral):
                return f"{expression.name}(): the pattern must be a string literal, not {pattern}"
            try:
                compiled = program(pattern.value, whole=expression.name == "match")
            except InvalidIRegexp as error:
                return f"{expression.name}(): {error}"
            if compiled.size > MAX_PROGRAM:
                return (
                    f"{expression.name}(): {pattern.value!r} makes an RE2 program of {compiled.size} "
                    f"instructions; at most {MAX_PROGRAM} (large Unicode classes repeated add up fast)"
                )
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


class Wildcard:
    """``[*]`` in the steps of a simple query."""

    def __repr__(self) -> str:
        return "[*]"


WILDCARD = Wildcard()
Step = str | int | Wildcard
"""A name, an index or a wildcard: one segment of a simple query."""


def simple_steps(query: JSONPathQuery) -> tuple[Step, ...] | None:
    """The steps of a query of names, indexes and wildcards (``$.order.lines[*].sku``),
    which ``walk`` answers without the library; None for any other query."""
    steps: list[Step] = []
    for segment in _segments(query):
        if not isinstance(segment, JSONPathChildSegment) or len(segment.selectors) != 1:
            return None
        selector = segment.selectors[0]
        if isinstance(selector, NameSelector):
            steps.append(selector.name)
        elif isinstance(selector, IndexSelector):
            steps.append(selector.index)
        elif isinstance(selector, WildcardSelector):
            steps.append(WILDCARD)
        else:
            return None
    return tuple(steps)


def walk(data: object, steps: tuple[Step, ...]) -> list[object]:
    """What the simple query of ``steps`` selects in ``data``, as jsonpath-rfc9535
    selects it but several times faster, within a budget of ``MAX_STEPS`` nodes."""
    return walk_from([data], steps)


def walk_from(nodes: list[object], steps: tuple[Step, ...]) -> list[object]:
    """``walk`` from each of ``nodes`` in turn, within one budget."""
    left = MAX_STEPS
    for step in steps:
        found: list[object] = []
        if isinstance(step, str):
            for node in nodes:
                if isinstance(node, dict) and step in node:
                    found.append(node[step])
        elif isinstance(step, int):
            for node in nodes:
                if isinstance(node, list) and -len(node) <= step < len(node):
                    found.append(node[step])
        else:
            for node in nodes:
                if isinstance(node, dict):
                    found += node.values()
                elif isinstance(node, list):
                    found += node
        left -= len(found)
        if left < 0:
            raise FilterBudgetExceeded(f"the query selected more than {MAX_STEPS} nodes on this event")
        nodes = found
    return nodes


def check_budget(steps: int) -> None:
    """Refuse, before it starts, an evaluation of ``steps`` steps that would pass the budget."""
    if steps > MAX_STEPS:
        raise FilterBudgetExceeded(f"the filter would take {steps} steps on this event; at most {MAX_STEPS}")


_CONDITION_OPS: dict[str, Operator] = {"==": "eq", "<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}
_MIRRORED = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


def contract_op(rfc_operator: str, value: object) -> Operator | None:
    """The payload condition's operator that a comparison of a value with the
    literal ``value`` is, if any: ``>=`` is ``gte``, but ``>= true`` is ``eq``,
    since RFC 9535's ``>=`` is ``>`` or ``==`` and ``>`` orders no booleans nor nulls."""
    if rfc_operator in ("<=", ">=") and (value is None or isinstance(value, bool)):
        return "eq"
    return _CONDITION_OPS.get(rfc_operator)


@dataclass(frozen=True, slots=True)
class ChildTest:
    """One test a filter makes of each child: at the singular ``relative`` path
    (``"['qty']"``; ``""`` for ``@`` itself), an RFC 9535 comparison operator
    with the literal ``value``, or ``exists``, or ``absent`` (``!@.qty``)."""

    relative: str
    steps: tuple[Step, ...]
    op: str
    value: object = None


Conjunction = tuple[ChildTest, ...]


def child_filter(query: JSONPathQuery) -> tuple[JSONPathQuery, tuple[Conjunction, ...]] | None:
    """``(prefix, alternatives)`` when ``query`` ends in a filter whose
    expression is ``||``-joined alternatives, each comparisons of singular
    relative queries with literals and existence tests joined by ``&&``. It
    then selects something exactly when, for some alternative, some child of
    what ``prefix`` selects passes each of its tests ("some child" distributes
    over "or"). So ``$.items[?@.qty > 3]`` is the condition ``gt 3`` on
    ``$.items[*].qty``, which the matcher can index."""
    segments = _segments(query)
    if not segments or not isinstance(segments[-1], JSONPathChildSegment) or len(segments[-1].selectors) != 1:
        return None
    selector = segments[-1].selectors[0]
    if not isinstance(selector, FilterSelector):
        return None
    alternatives = []
    for alternative in _joined(selector.expression.expression, "||"):
        tests = [_child_test(expression) for expression in _joined(alternative, "&&")]
        if None in tests:
            return None
        alternatives.append(tuple(t for t in tests if t is not None))
    return JSONPathQuery(env=ENVIRONMENT, segments=query.segments[:-1]), tuple(alternatives)


def _joined(expression: Expression, operator: str) -> list[Expression]:
    """The operands of ``expression`` as a chain of ``operator``, however parenthesized."""
    operands, pending = [], [expression]
    while pending:
        found = pending.pop()
        if isinstance(found, LogicalExpression) and found.operator == operator:
            pending += (found.right, found.left)
        else:
            operands.append(found)
    return operands


def _child_test(expression: Expression) -> ChildTest | None:
    if isinstance(expression, PrefixExpression) and expression.operator == "!":
        inner = _child_test(expression.right)
        return (
            None
            if inner is None or inner.op != "exists"
            else ChildTest(inner.relative, inner.steps, "absent")
        )
    if isinstance(expression, RelativeFilterQuery):
        steps = _singular(expression.query)
        if not steps:  # @ alone always exists; jsonpath-rfc9535 takes its value for a truth
            return None
        return ChildTest(str(expression.query)[1:], steps, "exists")
    if not isinstance(expression, ComparisonExpression):
        return None
    left, operator, right = expression.left, expression.operator, expression.right
    if isinstance(left, FilterExpressionLiteral):
        left, operator, right = right, _MIRRORED.get(operator, operator), left
    if not isinstance(left, RelativeFilterQuery) or not isinstance(right, FilterExpressionLiteral):
        return None
    steps = _singular(left.query)
    if steps is None or operator not in _MIRRORED:
        return None
    return ChildTest(str(left.query)[1:], steps, operator, right.value)


def _singular(query: JSONPathQuery) -> tuple[Step, ...] | None:
    steps = simple_steps(query)
    return None if steps is None or WILDCARD in steps else steps


def select(query: JSONPathQuery, data: object) -> list[object]:
    """The values of the nodes ``query`` selects in ``data``, within a whole
    budget of ``MAX_STEPS``: each distinct query is evaluated once per event,
    and each evaluation has a budget of its own."""
    _BUDGET.left = MAX_STEPS
    return [node.value for node in query.finditer(data)]  # type: ignore[arg-type]


def json_equal(left: object, right: object) -> bool:
    """Equality of JSON values: numbers by value, booleans only with booleans."""
    if is_number(left) and is_number(right):
        return left == right
    if isinstance(left, bool) or isinstance(right, bool):
        return left is right
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(json_equal, left, right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(v, right[k]) for k, v in left.items())
    return type(left) is type(right) and left == right


def is_number(value: object) -> bool:
    """A JSON number: booleans are not, whatever Python says."""
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- the filters as subscriptions hold them ----------------------------------------


def _query(expression: str) -> str:
    compile_path(expression)
    return expression


# Every query of this form is accepted (member names from the root); any other
# RFC 9535 query the matcher can evaluate in bounded time is too.
JSON_PATH_SCHEMA = {
    "type": "string",
    "pattern": r"^\$(\.[A-Za-z_][A-Za-z0-9_]{0,30}){1,5}$",
    "description": "an RFC 9535 JSONPath query, whose cost is bounded: no descendant segments under "
    "filters, no backtracking regexes",
}
JsonPath = Annotated[StrictStr, AfterValidator(_query), WithJsonSchema(JSON_PATH_SCHEMA)]


def _condition_schema(schema: dict[str, Any]) -> None:
    """The rule ``_value_fits_op`` holds, as JSON Schema: ``exists`` takes no
    value, ``in`` and ``nin`` a list, the others any JSON value."""
    path = JSON_PATH_SCHEMA
    shapes: list[tuple[dict[str, Any], list[str]]] = [
        ({"op": {"enum": ["exists"]}}, ["path", "op"]),
        ({"op": {"enum": ["in", "nin"]}, "value": {"type": "array"}}, ["path", "op", "value"]),
        (
            {"op": {"enum": [op for op in OPERATORS if op not in ("exists", "in", "nin")]}, "value": {}},
            ["path", "op", "value"],
        ),
    ]
    schema.clear()
    schema["oneOf"] = [
        {
            "type": "object",
            "properties": {"path": path, **properties},
            "required": required,
            "additionalProperties": False,
        }
        for properties, required in shapes
    ]


class PayloadCondition(BaseModel):
    """``{"path": ..., "op": ..., "value": ...}``: true when a selected node satisfies ``op``."""

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_condition_schema)

    path: JsonPath
    op: Operator
    value: Json = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> Self:
        given = "value" in self.model_fields_set
        if self.op == "exists" and given:
            raise ValueError("op 'exists' takes no value")
        if self.op != "exists" and not given:
            raise ValueError(f"op {self.op!r} needs a value")
        if self.op in ("in", "nin") and not isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} needs a list as its value")
        return self


def _payload_kind(condition: Any) -> str:
    return "query" if isinstance(condition, str) else "condition"


# Tagged by its shape, so that a faulty entry is reported against the one form it
# was meant to be, not against both.
PayloadFilter = Annotated[
    Annotated[PayloadCondition, Tag("condition")] | Annotated[JsonPath, Tag("query")],
    Discriminator(_payload_kind),
]


class EventFilters(BaseModel):
    """Every part that is present must hold: ``source`` lists the sources
    accepted, ``metadata`` the entries the event's metadata must have (equal as
    JSON values), and ``payload`` conditions on its data. What each means on an
    event is ``processor.predicates``'."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: list[StrictStr] | None = None
    metadata: JsonObject | None = None
    payload: list[PayloadFilter] | None = None
