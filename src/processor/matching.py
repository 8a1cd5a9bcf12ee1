"""The subscription matcher: which active subscriptions want an event.

Per client, a fastmatch index maps event-type patterns to subscription ids, so
an event is only ever compared with its own client's patterns; the filters of
the few subscriptions whose pattern matched are checked after, each on its own:
a filter that fails on an event (an error, data too deep for it) fails that
pair alone, and the event's other subscriptions are matched as usual.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from fastmatch import PatternIndex
from processor.metrics import Metrics
from processor.models import Event, Subscription, describe
from processor.store import SubscriptionChange

log = logging.getLogger(__name__)


class SubscriptionMatcher:
    def __init__(self) -> None:
        self._indexes: dict[str, PatternIndex[str]] = {}
        self._subscriptions: dict[str, Subscription] = {}

    def __len__(self) -> int:
        """Active subscriptions held."""
        return len(self._subscriptions)

    def apply(self, change: SubscriptionChange, metrics: Metrics) -> None:
        """Apply one write; a stored subscription that breaks the contract is
        skipped with an error log (and dropped), and the others keep working."""
        if change.document is None:
            self.discard(change.subscription_id)
            return
        try:
            subscription = Subscription.model_validate(change.document)
        except ValidationError as error:
            log.error("subscription %r skipped, it is invalid: %s", change.subscription_id, describe(error))
            metrics.subscriptions_invalid.inc()
            self.discard(change.subscription_id)
            return
        self.put(subscription)

    def put(self, subscription: Subscription) -> None:
        """Add, replace or (when inactive) drop a subscription."""
        self.discard(subscription.id)
        if not subscription.active:
            return
        index = self._indexes.get(subscription.client_id)
        if index is None:
            index = self._indexes[subscription.client_id] = PatternIndex()
        index.add(subscription.event_type_pattern, subscription.id)
        self._subscriptions[subscription.id] = subscription

    def discard(self, subscription_id: str) -> None:
        old = self._subscriptions.pop(subscription_id, None)
        if old is None:
            return
        index = self._indexes[old.client_id]
        index.remove(old.event_type_pattern, old.id)
        if not len(index):
            del self._indexes[old.client_id]

    def match(self, event: Event) -> tuple[list[Subscription], list[tuple[Subscription, Exception]]]:
        """The subscriptions that want ``event``: held (so active), of its client,
        with a pattern that matches its type and filters that hold; and those
        whose filter raised on it, with the error."""
        index = self._indexes.get(event.client_id)
        if index is None:
            return [], []
        matched, failed = [], []
        for subscription in map(self._subscriptions.__getitem__, index.match(event.type)):
            filters = subscription.filters
            if filters is None:
                matched.append(subscription)
                continue
            try:
                if filters.accept(event):
                    matched.append(subscription)
            except Exception as error:  # whatever a filter raises fails this pair alone
                failed.append((subscription, error))
        return matched, failed
