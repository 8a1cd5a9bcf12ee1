"""A subscription's filters as conditions on the parts of an event they look at.

Every filter, whatever its form (a payload condition, a bare query, ``source``,
an entry of ``metadata``), becomes a ``Condition`` on a ``Selector``, the part
of the event it looks at. Selectors are interned by their normalized form (RFC
9535's for payload paths): within one event each distinct part is selected once
(``Selections``), however many subscriptions look at it, and summed up once
(``Selection``) into what conditions ask of it: its values as hash keys under
JSON equality, the extremes of its numbers and of its strings. A condition is
then a lookup or one comparison, never a walk over the nodes, and the same
keys and extremes let ``processor.filter_index`` find the subscriptions whose
conditions hold without asking each.
"""

from __future__ import annotations

import math
import operator
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from typing import Any, ClassVar

from jsonpath_rfc9535 import JSONPathQuery

from processor.filters import (
    WILDCARD,
    ChildTest,
    Conjunction,
    EventFilters,
    Operator,
    Step,
    check_budget,
    child_filter,
    compile_path,
    contract_op,
    is_number,
    json_equal,
    select,
    simple_steps,
    walk,
    walk_from,
)
from processor.models import Event

MAX_INDEXED_VALUES = 64  # of an ``in`` condition that the filter index looks up by value

# Keys of the JSON values that Python's own equality would confuse with numbers.
_TRUE, _FALSE, _NULL = ("true",), ("false",), ("null",)


def value_key(value: object) -> Hashable | None:
    """The hash key of a scalar JSON value, equal for values JSON equality
    finds equal (``1`` and ``1.0``), apart for those it does not (``true`` and
    ``1``); None for an array or an object."""
    if isinstance(value, bool):
        return _TRUE if value else _FALSE
    if value is None:
        return _NULL
    if isinstance(value, str | int | float):
        return value
    return None


class Selection:
    """The values a selector found in one event, summed up for the conditions:
    scalar keys, arrays and objects as they are, whether some value is equal
    to nothing (NaN, or not JSON), the smallest and largest number and string;
    or the error that stopped the selecting."""

    __slots__ = ("containers", "error", "first", "high", "keys", "last", "low", "unequal", "values")

    def __init__(self, values: Sequence[object] = (), error: Exception | None = None) -> None:
        self.values = values
        keys: set[Hashable] = set()
        containers: list[object] = []
        unequal = False
        low = high = first = last = None
        for value in values:
            if isinstance(value, str):
                keys.add(value)
                if first is None or value < first:
                    first = value
                if last is None or value > last:
                    last = value
            elif isinstance(value, bool):
                keys.add(_TRUE if value else _FALSE)
            elif isinstance(value, int | float):
                if isinstance(value, float) and math.isnan(value):  # a BSON double can be: equal to nothing
                    unequal = True
                    continue
                keys.add(value)
                if low is None or value < low:
                    low = value
                if high is None or value > high:
                    high = value
            elif value is None:
                keys.add(_NULL)
            elif isinstance(value, list | dict):
                containers.append(value)
            else:
                unequal = True
        self.keys, self.containers, self.unequal = keys, containers, unequal
        self.low, self.high, self.first, self.last = low, high, first, last
        self.error = error

    def extreme(self, text: bool, upper: bool) -> Any:
        """The largest (``upper``) or smallest string (``text``) or number, if any."""
        if text:
            return self.last if upper else self.first
        return self.high if upper else self.low


_NOTHING = Selection()


class Selector(ABC):
    """A part of an event that conditions look at; one object per distinct part."""

    __slots__ = ("__weakref__", "key")

    def __init__(self, key: str) -> None:
        self.key = key  # what an operator reads: "$['region']", "source", "metadata['tier']"

    @abstractmethod
    def select(self, event: Event) -> Selection: ...

    def __repr__(self) -> str:
        return f"<{self.key}>"


class _Path(Selector):
    __slots__ = ("_query", "_steps")

    def __init__(self, query: JSONPathQuery) -> None:
        super().__init__(str(query))
        self._query = query
        self._steps = simple_steps(query)

    def select(self, event: Event) -> Selection:
        try:
            if self._steps is None:
                return Selection(select(self._query, event.data))
            return Selection(walk(event.data, self._steps))
        except Exception as error:  # whatever stops a query fails the pairs that need it
            return Selection(error=error)


class _Children(Selector):
    """Below every child of what ``prefix`` selects, the value at a singular
    relative path (or the child itself): ``$['items'][*]['qty']``."""

    __slots__ = ("_below", "_prefix", "_steps")

    def __init__(self, prefix: JSONPathQuery, relative: str, steps: tuple[Step, ...]) -> None:
        super().__init__(f"{prefix}[*]{relative}")
        self._prefix = prefix
        self._steps = simple_steps(prefix)
        self._below = (WILDCARD, *steps)

    def select(self, event: Event) -> Selection:
        try:
            if self._steps is not None:
                return Selection(walk(event.data, self._steps + self._below))
            return Selection(walk_from(select(self._prefix, event.data), self._below))
        except Exception as error:  # whatever stops a query fails the pairs that need it
            return Selection(error=error)


def children(prefix: JSONPathQuery, relative: str = "", steps: tuple[Step, ...] = ()) -> Selector:
    return _interned(f"{prefix}[*]{relative}", lambda: _Children(prefix, relative, steps))


class _Source(Selector):
    __slots__ = ()

    def select(self, event: Event) -> Selection:
        return _NOTHING if event.source is None else Selection((event.source,))


class _Metadata(Selector):
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        super().__init__(f"metadata[{name!r}]")
        self._name = name

    def select(self, event: Event) -> Selection:
        metadata = event.metadata
        if metadata is None or self._name not in metadata:
            return _NOTHING
        return Selection((metadata[self._name],))


_SELECTORS: weakref.WeakValueDictionary[str, Selector] = weakref.WeakValueDictionary()


def _interned(key: str, make: Callable[[], Selector]) -> Selector:
    selector = _SELECTORS.get(key)
    if selector is None:
        selector = _SELECTORS[key] = make()
    return selector


def path(expression: str) -> Selector:
    query = compile_path(expression)
    return _interned(str(query), lambda: _Path(query))


SOURCE = _Source("source")


def metadata(name: str) -> Selector:
    return _interned(f"metadata[{name!r}]", lambda: _Metadata(name))


class Condition(ABC):
    """What a filter asks of its selector's ``Selection`` in an event."""

    __slots__ = ("selector",)

    def __init__(self, selector: Selector) -> None:
        self.selector = selector

    @abstractmethod
    def holds(self, selection: Selection) -> bool: ...

    def indexed_by(self) -> list[Condition]:
        """Conditions one of which holds whenever this one does, each of a kind
        an index can find the holders of (``eq``/``in`` by hash, ranges by
        bisection); none if there are no such conditions."""
        return []


class Never(Condition):
    """A comparison no value satisfies: ``gt`` a boolean, ``in`` nothing."""

    __slots__ = ()

    def holds(self, selection: Selection) -> bool:
        return False


class Exists(Condition):
    __slots__ = ()

    def holds(self, selection: Selection) -> bool:
        return bool(selection.values)


class OneOf(Condition):
    """``eq`` and ``in``: some value is equal to one of ``values``. Scalars go by
    hash (``keys``), so that a list of 100,000 costs one lookup per value
    selected; arrays and objects one by one."""

    __slots__ = ("containers", "keys")

    def __init__(self, selector: Selector, values: Sequence[object]) -> None:
        super().__init__(selector)
        self.keys = {key for key in map(value_key, values) if key is not None}
        self.containers = [value for value in values if value_key(value) is None]

    def holds(self, selection: Selection) -> bool:
        if not self.keys.isdisjoint(selection.keys):
            return True
        return any(json_equal(found, value) for found in selection.containers for value in self.containers)

    def indexed_by(self) -> list[Condition]:
        # Indexed under each of its values: a long list would cost the index a
        # hash table per value, and is checked by one lookup anyway.
        return [] if self.containers or len(self.keys) > MAX_INDEXED_VALUES else [self]


class NoneOf(OneOf):
    """``ne`` and ``nin``: some value is equal to none of ``values``."""

    __slots__ = ()

    def holds(self, selection: Selection) -> bool:
        if selection.unequal or not self.keys.issuperset(selection.keys):
            return True
        return any(
            not any(json_equal(found, value) for value in self.containers) for found in selection.containers
        )

    def indexed_by(self) -> list[Condition]:
        return []  # the values it holds for are all but a few


class Bound(Condition):
    """``gt``, ``gte``, ``lt``, ``lte`` a number or a string: some value of the
    same kind is beyond the bound, so the largest (or smallest) one is."""

    __slots__ = ("compare", "op", "text", "upper", "value")
    COMPARE: ClassVar[dict[str, Callable[[Any, Any], bool]]] = {
        "gt": operator.gt,
        "gte": operator.ge,
        "lt": operator.lt,
        "lte": operator.le,
    }

    def __init__(self, selector: Selector, op: Operator, value: str | int | float) -> None:
        super().__init__(selector)
        self.op, self.value = op, value
        self.compare = self.COMPARE[op]
        self.text = isinstance(value, str)
        self.upper = op in ("gt", "gte")  # compared with the largest value, else with the smallest

    def holds(self, selection: Selection) -> bool:
        extreme = selection.extreme(self.text, self.upper)
        return extreme is not None and self.compare(extreme, self.value)

    def indexed_by(self) -> list[Condition]:
        return [self]


class SomeChild(Condition):
    """A bare query that ends in a filter of tests: for one of its
    alternatives (``||``), some child of what precedes the filter passes each
    of that alternative's tests (``&&``). It is indexed by what one comparison
    of each alternative makes of the values at its relative path (``@.sku ==
    'K1'`` is ``eq 'K1'`` on ``$.items[*].sku``): one of those holds whenever
    it does."""

    __slots__ = ("access", "alternatives", "cost")

    def __init__(
        self, selector: Selector, alternatives: Sequence[Conjunction], access: list[Condition]
    ) -> None:
        super().__init__(selector)
        self.alternatives = tuple(alternatives)
        self.access = access
        self.cost = sum(1 + len(test.steps) for tests in alternatives for test in tests)  # per child, at most

    def holds(self, selection: Selection) -> bool:
        check_budget(len(selection.values) * self.cost)
        return any(
            all(_passes(test, child) for test in tests)
            for tests in self.alternatives
            for child in selection.values
        )

    def indexed_by(self) -> list[Condition]:
        return self.access


def _passes(test: ChildTest, child: object) -> bool:
    """RFC 9535's comparison of the value at ``test``'s relative path with its literal."""
    found = walk(child, test.steps)
    if test.op in ("exists", "absent"):
        return bool(found) == (test.op == "exists")
    equal = bool(found) and json_equal(found[0], test.value)
    if test.op in ("==", "!="):
        return equal == (test.op == "==")
    if not found:
        return False
    value, bound = found[0], test.value
    comparable = (isinstance(value, str) and isinstance(bound, str)) or (
        is_number(value) and is_number(bound)
    )
    if test.op in ("<", "<="):
        return (comparable and value < bound) or (test.op == "<=" and equal)  # type: ignore[operator]
    return (comparable and value > bound) or (test.op == ">=" and equal)  # type: ignore[operator]


def condition(selector: Selector, op: Operator, value: object) -> Condition:
    """The condition ``{"op": op, "value": value}`` on ``selector``, as the data
    contract defines it: true when some selected value satisfies it."""
    if op == "exists":
        return Exists(selector)
    if op in ("eq", "ne"):
        return (OneOf if op == "eq" else NoneOf)(selector, [value])
    if op in ("in", "nin"):
        assert isinstance(value, list)  # the model refuses anything else
        if op == "in" and not value:
            return Never(selector)
        return (OneOf if op == "in" else NoneOf)(selector, value)
    if isinstance(value, str) or is_number(value):
        return Bound(selector, op, value)  # type: ignore[arg-type]
    return Never(selector)  # numbers and strings are ordered, nothing else


def bare(expression: str) -> Condition:
    """A bare query: true when it selects anything. One that ends in a filter of
    tests (``processor.filters.child_filter``) is judged child by child, and
    indexed by one comparison of each alternative; one of a single comparison
    is exactly the condition that comparison makes on the values at its
    relative path."""
    found = child_filter(compile_path(expression))
    if found is None:
        return Exists(path(expression))
    prefix, alternatives = found
    if len(alternatives) == 1 and len(alternatives[0]) == 1:
        exact = _implied(prefix, alternatives[0][0])
        if exact is not None:
            return exact
    access: list[Condition] = []
    for tests in alternatives:
        indexable = [c for test in tests for c in _indexable(_implied(prefix, test))]
        best = next((c for kind in (OneOf, Bound) for c in indexable if type(c) is kind), None)
        if best is None:  # an alternative no index can find: judged on every event
            access = []
            break
        access.append(best)
    return SomeChild(children(prefix), alternatives, access)


def _indexable(condition: Condition | None) -> list[Condition]:
    return [] if condition is None else condition.indexed_by()


def _implied(prefix: JSONPathQuery, test: ChildTest) -> Condition | None:
    """The condition on the values at ``test``'s relative path below every
    child that holds exactly when some child passes ``test``, if there is one."""
    op = "exists" if test.op == "exists" else contract_op(test.op, test.value)
    if op is None:
        return None
    return condition(children(prefix, test.relative, test.steps), op, test.value)


def conditions(filters: EventFilters | None) -> list[Condition]:
    """Every condition of a subscription's filters; it matches when all hold."""
    return [found for _, found in labelled_conditions(filters)]


def labelled_conditions(filters: EventFilters | None) -> list[tuple[str, Condition]]:
    """``conditions``, each with the filter it comes from as a field of the
    subscription names it (``filters.payload[0]``): what an explanation cites."""
    if filters is None:
        return []
    found: list[tuple[str, Condition]] = []
    if filters.source is not None:
        found.append(("filters.source", condition(SOURCE, "in", filters.source)))
    for name, expected in (filters.metadata or {}).items():
        found.append((f"filters.metadata.{name}", condition(metadata(name), "eq", expected)))
    for number, entry in enumerate(filters.payload or ()):
        field = f"filters.payload[{number}]"
        if isinstance(entry, str):
            found.append((field, bare(entry)))
        else:
            found.append((field, condition(path(entry.path), entry.op, entry.value)))
    return found


class Selections(dict[Selector, Selection]):
    """The selections of one event, each made the first time a condition asks."""

    __slots__ = ("_event",)

    def __init__(self, event: Event) -> None:
        super().__init__()
        self._event = event

    def __missing__(self, selector: Selector) -> Selection:
        selection = self[selector] = selector.select(self._event)
        return selection
