"""The subscription matcher: which active subscriptions want an event.

Per client, a fastmatch index maps event-type patterns to the subscriptions
that share each pattern, so an event is only ever compared with its own
client's patterns, however many there are. The subscriptions of each pattern
that matched are then found by their filters through a ``FilterIndex``, from
one selection per distinct part of the event: a thousand subscriptions routing
by payload cost about what ten cost. A filter that cannot be evaluated on an
event (an error, data too deep for it) fails that pair alone, and the event's
other subscriptions are matched as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydantic import ValidationError

from fastmatch import PatternIndex
from processor.filter_index import Failed, FilterIndex, Matched
from processor.models import Event, Subscription, describe
from processor.predicates import Selections, conditions
from processor.stores.base import SubscriptionChange

log = logging.getLogger(__name__)


class SubscriptionMatcher:
    def __init__(self, pattern_index: Callable[[], PatternIndex[FilterIndex]] = PatternIndex) -> None:
        self._new_pattern_index = pattern_index  # either trie: fastmatch chooses, tests try both
        self._patterns: dict[str, PatternIndex[FilterIndex]] = {}  # per client
        self._groups: dict[tuple[str, str], FilterIndex] = {}  # per client and pattern
        self._subscriptions: dict[str, Subscription] = {}

    def __len__(self) -> int:
        """Active subscriptions held."""
        return len(self._subscriptions)

    def apply(self, change: SubscriptionChange) -> bool:
        """Apply one write; False when the stored subscription breaks the contract."""
        return self.admit(change) is None

    def admit(self, change: SubscriptionChange) -> str | None:
        """Apply one write; why the stored subscription was refused, or None. A
        refused one is skipped with an error log (and dropped), and the others
        keep working."""
        if change.document is None:
            self.discard(change.subscription_id)
            return change.problem  # the store that could not read it logged why
        try:
            self.put(Subscription.model_validate(change.document))
        except ValidationError as error:
            reason = f"it is invalid: {describe(error)}"
            log.error("subscription %r skipped, %s", change.subscription_id, reason)
        except Exception as error:  # a defect of ours that one subscription finds must not stop every other
            reason = f"it could not be indexed: {error!r}"
            log.exception("subscription %r skipped: it could not be indexed", change.subscription_id)
        else:
            return None
        self.discard(change.subscription_id)
        return reason

    def put(self, subscription: Subscription) -> None:
        """Add, replace or (when inactive) drop a subscription."""
        self.discard(subscription.id)
        if not subscription.active:
            return
        found = conditions(subscription.filters)
        where = subscription.client_id, subscription.event_type_pattern
        group = self._groups.get(where)
        if group is None:
            group = self._groups[where] = FilterIndex()
            patterns = self._patterns.get(subscription.client_id)
            if patterns is None:
                patterns = self._patterns[subscription.client_id] = self._new_pattern_index()
            patterns.add(where[1], group)
        group.add(subscription, found)
        self._subscriptions[subscription.id] = subscription

    def discard(self, subscription_id: str) -> None:
        old = self._subscriptions.pop(subscription_id, None)
        if old is None:
            return
        where = old.client_id, old.event_type_pattern
        group = self._groups[where]
        group.remove(subscription_id)
        if len(group):
            return
        del self._groups[where]
        patterns = self._patterns[old.client_id]
        patterns.remove(where[1], group)
        if not len(patterns):
            del self._patterns[old.client_id]

    def match(self, event: Event) -> tuple[Matched, Failed]:
        """The subscriptions that want ``event``: held (so active), of its client,
        with a pattern that matches its type and filters that hold; and those
        whose filter could not be evaluated on it, with the error."""
        matched: Matched = []
        failed: Failed = []
        patterns = self._patterns.get(event.client_id)
        if patterns is None:
            return matched, failed
        selections = Selections(event)
        for group in patterns.match(event.type):
            group.match(selections, matched, failed)
        return matched, failed
