"""The filters of the subscriptions that share a pattern, indexed.

A thousand subscriptions of one client whose pattern matches an event should
cost about what ten cost, when they route by payload (one per tenant, region
or tier). So each filtered subscription is indexed by one of its conditions,
its access condition, as content-based publish/subscribe systems do (Fabret
et al., SIGMOD 2001): ``eq``/``in`` in a hash from JSON value to subscriptions,
ranges in sorted bounds; a bare query judged child by child is indexed by one
comparison of each of its alternatives. An event then looks up, per selector,
the keys and the extremes of what it selected
(``processor.predicates.Selection``), and only the subscriptions found there
have their other conditions judged. A subscription with no condition that can
be indexed (``exists``, ``ne``, ``nin``, an ``in`` of more than 64 values, a
bare query the library evaluates) is judged on every event, from the
selections every other subscription shares.

A pair fails (``failed``) when a condition it needs could not be evaluated on
the event and none of its conditions is false: the answer does not depend on
the order the conditions are judged in.
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Iterator
from typing import Any

from processor.models import Subscription
from processor.predicates import Bound, Condition, Never, OneOf, Selection, Selections, Selector

Matched = list[Subscription]
Failed = list[tuple[Subscription, Exception]]


class _Entry:
    __slots__ = ("conditions", "rest", "subscription")

    def __init__(
        self, subscription: Subscription, conditions: list[Condition], exact: Condition | None
    ) -> None:
        self.subscription = subscription
        self.conditions = tuple(conditions)
        # Judged once an access condition held, but for the one that is its
        # own access condition (``exact``): it held.
        self.rest = tuple(c for c in conditions if c is not exact)


class _Bounds:
    """The bounds of one kind of range condition (``gt`` numbers, say) on one
    selector, each distinct bound once, sorted: the ones a value is beyond
    make one slice, and adding or removing one is a bisection."""

    __slots__ = ("_cut", "entries", "text", "upper", "values")

    def __init__(self, text: bool, op: str) -> None:
        self.values: list[Any] = []
        self.entries: list[dict[str, _Entry]] = []  # of each bound, by subscription id
        self.text = text
        self.upper = op in ("gt", "gte")
        # Where the bounds an extreme satisfies start (or end); one equal to it holds for gte and lte only.
        self._cut = bisect.bisect_left if op in ("gt", "lte") else bisect.bisect_right

    def add(self, value: Any, entry: _Entry) -> None:
        at = bisect.bisect_left(self.values, value)
        if at == len(self.values) or self.values[at] != value:
            self.values.insert(at, value)
            self.entries.insert(at, {})
        self.entries[at][entry.subscription.id] = entry

    def remove(self, value: Any, entry: _Entry) -> None:
        at = bisect.bisect_left(self.values, value)
        if at == len(self.values) or self.values[at] != value:
            return  # removed already: two alternatives of a query may ask the same
        self.entries[at].pop(entry.subscription.id, None)
        if not self.entries[at]:
            del self.values[at], self.entries[at]

    def holding(self, extreme: Any) -> list[dict[str, _Entry]]:
        """The entries whose bound ``extreme`` satisfies: ``gt``/``gte`` bounds
        below the largest value, ``lt``/``lte`` bounds above the smallest."""
        at = self._cut(self.values, extreme)
        return self.entries[:at] if self.upper else self.entries[at:]


class _Access:
    """The access conditions on one selector."""

    __slots__ = ("bounds", "equal", "size")

    def __init__(self) -> None:
        self.equal: dict[Hashable, dict[str, _Entry]] = {}
        self.bounds: dict[tuple[bool, str], _Bounds] = {}  # (text, op)
        self.size = 0

    def add(self, condition: Condition, entry: _Entry) -> None:
        self.size += 1
        if isinstance(condition, Bound):
            kind = (condition.text, condition.op)
            bounds = self.bounds.get(kind)
            if bounds is None:
                bounds = self.bounds[kind] = _Bounds(*kind)
            bounds.add(condition.value, entry)
            return
        assert isinstance(condition, OneOf)
        for key in condition.keys:
            self.equal.setdefault(key, {})[entry.subscription.id] = entry

    def remove(self, condition: Condition, entry: _Entry) -> None:
        self.size -= 1
        if isinstance(condition, Bound):
            kind = (condition.text, condition.op)
            bounds = self.bounds.get(kind)
            if bounds is not None:
                bounds.remove(condition.value, entry)
                if not bounds.values:
                    del self.bounds[kind]
            return
        assert isinstance(condition, OneOf)
        for key in condition.keys:
            entries = self.equal.get(key)
            if entries is None:  # removed already: two alternatives of a query may ask the same
                continue
            entries.pop(entry.subscription.id, None)
            if not entries:
                del self.equal[key]

    def collect(self, selection: Selection, into: dict[str, _Entry]) -> None:
        """Into ``into``, the entries whose access condition ``selection`` satisfies."""
        equal = self.equal
        for key in selection.keys:
            found = equal.get(key)
            if found is not None:
                into.update(found)
        for bounds in self.bounds.values():
            extreme = selection.extreme(bounds.text, bounds.upper)
            if extreme is not None:
                for found in bounds.holding(extreme):
                    into.update(found)

    def entries(self) -> Iterator[_Entry]:
        """Every entry indexed here, some more than once."""
        for found in self.equal.values():
            yield from found.values()
        for bounds in self.bounds.values():
            for found in bounds.entries:
                yield from found.values()


def _access(conditions: list[Condition]) -> tuple[list[Condition], Condition | None]:
    """The conditions to index a subscription by (one of them holds whenever
    it matches), and the condition of the subscription that is its own access
    condition, if one is: an ``eq``/``in`` of scalars first (a hash finds the
    few that hold), else a range."""
    for kinds in ({OneOf}, {OneOf, Bound}):
        for owner in conditions:
            access = owner.indexed_by()
            if access and all(type(c) in kinds for c in access):
                return access, owner if access == [owner] else None
    return [], None


class FilterIndex:
    """The subscriptions of one client that share one pattern, by their filters."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[_Entry, list[Condition]]] = {}
        self._unfiltered: dict[str, Subscription] = {}
        self._judged: dict[str, _Entry] = {}  # no access condition: judged on every event
        self._access: dict[Selector, _Access] = {}

    def __len__(self) -> int:
        return len(self._entries) + len(self._unfiltered)

    def add(self, subscription: Subscription, conditions: list[Condition]) -> None:
        """Add ``subscription``, whose id this index does not hold yet."""
        if not conditions:
            self._unfiltered[subscription.id] = subscription
            return
        if any(isinstance(c, Never) for c in conditions):
            self._entries[subscription.id] = _Entry(subscription, conditions, None), []
            return  # it never matches: indexed nowhere
        access, exact = _access(conditions)
        entry = _Entry(subscription, conditions, exact)
        self._entries[subscription.id] = entry, access
        if not access:
            self._judged[subscription.id] = entry
        for condition in access:
            index = self._access.get(condition.selector)
            if index is None:
                index = self._access[condition.selector] = _Access()
            index.add(condition, entry)

    def remove(self, subscription_id: str) -> None:
        if self._unfiltered.pop(subscription_id, None) is not None:
            return
        held = self._entries.pop(subscription_id, None)
        if held is None:
            return
        entry, access = held
        self._judged.pop(subscription_id, None)
        for condition in access:
            index = self._access[condition.selector]
            index.remove(condition, entry)
            if not index.size:
                del self._access[condition.selector]

    def match(self, selections: Selections, matched: Matched, failed: Failed) -> None:
        """Append to ``matched`` the subscriptions whose filters hold for the
        event of ``selections``, and to ``failed`` those that could not be judged."""
        matched.extend(self._unfiltered.values())
        if not self._entries:
            return
        candidates: dict[str, _Entry] = {}
        unsure: dict[str, _Entry] = {}  # an access condition could not be judged: all their conditions are
        for selector, index in self._access.items():
            selection = selections[selector]
            if selection.error is None:
                index.collect(selection, candidates)
            else:
                unsure.update((entry.subscription.id, entry) for entry in index.entries())
        for key, entry in candidates.items():
            if key not in unsure:
                _judge(entry, entry.rest, selections, matched, failed)
        for entry in (*unsure.values(), *self._judged.values()):
            _judge(entry, entry.conditions, selections, matched, failed)


def _judge(
    entry: _Entry, conditions: tuple[Condition, ...], selections: Selections, matched: Matched, failed: Failed
) -> None:
    error: Exception | None = None
    for condition in conditions:
        selection = selections[condition.selector]
        if selection.error is not None:
            error = error or selection.error
            continue
        try:
            if not condition.holds(selection):
                return
        except Exception as raised:  # json_equal on data too deep for it, say: this pair alone
            error = error or raised
    if error is None:
        matched.append(entry.subscription)
    else:
        failed.append((entry.subscription, error))
