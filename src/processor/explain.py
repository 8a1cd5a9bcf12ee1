"""Why an event reaches a subscription or not, told by the matcher itself.

The verdict is the processor's own: the subscriptions as they stand are put in
a ``SubscriptionMatcher`` and the event is matched as the loop matches it (the
same trie, the same filter index). Only the reason for a refusal is found
apart, from the same conditions (``predicates.labelled_conditions``) judged on
the same selections, and from fastmatch's contract for the pattern, so that an
explanation cannot disagree with what the loop did.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from fastmatch import SEGMENT_NAMES, first_difference
from processor.filter_index import Failed, Matched
from processor.filters import EventFilters, PayloadCondition
from processor.jobs import job_id
from processor.matching import SubscriptionMatcher
from processor.models import Event, Subscription, parse_event
from processor.predicates import Selection, Selections, labelled_conditions
from processor.stores.base import Repairs, SubscriptionChange

SHOWN_VALUES = 5  # of what a filter's path selected, shown in a reason
SHOWN_CHARACTERS = 120  # of each value shown: an event's values are as large as its producer made them
UNSAVED_ID = "(not stored)"  # the id of an event typed to be explained, when it has none


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A stored subscription that breaks the contract: the processor skips it."""

    id: str
    reason: str
    client_id: str | None = None
    name: str | None = None


Held = Subscription | Unreadable


@dataclass(frozen=True, slots=True)
class Verdict:
    """One subscription's answer to one event. ``field``: the part of the
    subscription that refused it; ``job_id``: the job it becomes, when it matches."""

    subscription_id: str
    name: str | None
    matches: bool
    field: str | None = None
    reason: str | None = None
    job_id: str | None = None


@dataclass(frozen=True, slots=True)
class Explanation:
    """Every verdict on one event, and whether the event is stored (only a
    stored event's verdicts name the jobs it becomes)."""

    event: Event
    stored: bool
    verdicts: list[Verdict]
    as_of: datetime

    def document(self) -> dict[str, Any]:
        """As JSON: what the API answers and the command prints."""
        return {
            "event": {
                "id": self.event.id if self.stored else None,
                "type": self.event.type,
                "client_id": self.event.client_id,
                "stored": self.stored,
            },
            "subscriptions_as_of": self.as_of.isoformat(),
            "matches": sum(verdict.matches for verdict in self.verdicts),
            "verdicts": [asdict(verdict) for verdict in self.verdicts],
        }


def explain_stored(repairs: Repairs, event_id: str) -> Explanation:
    """The verdicts on the stored event ``event_id``: ``LookupError`` when there
    is none, ``InvalidEvent`` when it breaks the contract (it is a dead letter)."""
    entry = repairs.event(event_id)
    if entry is None:
        raise LookupError(f"no event with id {event_id!r}")
    event, as_of = entry.event(), datetime.now(UTC)
    return Explanation(event, True, _client_judge(repairs, event).explain(event), as_of)


def explain_unsaved(repairs: Repairs, document: Mapping[str, Any]) -> Explanation:
    """The verdicts on an event as it would be inserted (``time`` now when it
    has none); ``InvalidEvent`` names the fields a store would refuse."""
    as_of = datetime.now(UTC)
    event = parse_event({**document, "id": document.get("id") or UNSAVED_ID}, as_of)
    verdicts = _client_judge(repairs, event).explain(event)
    return Explanation(event, False, [replace(verdict, job_id=None) for verdict in verdicts], as_of)


def _client_judge(repairs: Repairs, event: Event) -> Judge:
    """A judge of the event's client's subscriptions alone: compiling every
    client's would cost a request time in proportion to all of them."""
    changes = repairs.current_subscriptions()
    return Judge(c for c in changes if (c.document or {}).get("client_id") == event.client_id)


class Judge:
    """The subscriptions as they stand now, matched as the loop matches them."""

    def __init__(self, changes: Iterable[SubscriptionChange]) -> None:
        self.matcher = SubscriptionMatcher()
        self.held: dict[str, Held] = {}
        for change in changes:
            problem = self.matcher.admit(change)
            key = change.subscription_id
            if problem is not None:
                stored = change.document or {}
                self.held[key] = Unreadable(
                    key, problem, _text(stored.get("client_id")), _text(stored.get("name"))
                )
            elif change.document is not None:
                self.held[key] = Subscription.model_validate(change.document)

    def match(self, event: Event) -> tuple[Matched, Failed]:
        return self.matcher.match(event)

    def explain(self, event: Event) -> list[Verdict]:
        """A verdict for every subscription of the event's client, in the order
        they were given: whether it matches, and if not, the first reason."""
        matched, failed = self.match(event)
        wanted = {subscription.id for subscription in matched}
        failures = {subscription.id: error for subscription, error in failed}
        selections = Selections(event)
        verdicts = []
        for held in self.held.values():
            if held.client_id != event.client_id:
                continue
            if isinstance(held, Unreadable):
                verdicts.append(
                    Verdict(held.id, held.name, False, "subscription", readable(f"skipped: {held.reason}"))
                )
            elif held.id in wanted:
                verdicts.append(Verdict(held.id, held.name, True, job_id=job_id(event.id, held.id)))
            elif held.id in failures:
                field = _failing_field(held, selections) or "filters"
                error = failures[held.id]
                reason = f"could not be evaluated on the event ({type(error).__name__}: {error})"
                verdicts.append(Verdict(held.id, held.name, False, field, readable(reason)))
            else:
                verdicts.append(Verdict(held.id, held.name, False, *_refusal(held, event, selections)))
        return verdicts


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _refusal(subscription: Subscription, event: Event, selections: Selections) -> tuple[str, str]:
    """The first part of ``subscription`` that refuses ``event``, and why."""
    if not subscription.active:
        return "active", "the subscription is inactive"
    pattern = subscription.event_type_pattern
    at = first_difference(pattern, event.type)
    if at is not None:
        given, wanted = event.type.split(":")[at], pattern.split(":")[at]
        return (
            "event_type_pattern",
            f"segment {at + 1} ({SEGMENT_NAMES[at]}) of the type is {given!r}; "
            f"the pattern {pattern!r} wants {wanted!r}",
        )
    filters = subscription.filters
    for field, condition in labelled_conditions(filters):
        selection = selections[condition.selector]
        if selection.error is None and not condition.holds(selection):
            assert filters is not None
            return field, _why(field, filters, event, selection)
    # The matcher refused it and no condition does: a defect, said as one.
    return (
        "filters",
        "refused by the matcher, but every condition holds: a defect of the processor, please report it",
    )


def _failing_field(subscription: Subscription, selections: Selections) -> str | None:
    for field, condition in labelled_conditions(subscription.filters):
        selection = selections[condition.selector]
        if selection.error is not None:
            return field
        try:
            condition.holds(selection)
        except Exception:
            return field
    return None


def _why(field: str, filters: EventFilters, event: Event, selection: Selection) -> str:
    if field == "filters.source":
        listed = _shown(filters.source)
        if event.source is None:
            return f"the event has no source; the subscription takes only {listed}"
        return f"the event's source {_shown(event.source)} is not listed: {listed}"
    if field.startswith("filters.metadata."):
        name = field.removeprefix("filters.metadata.")
        expected = _shown((filters.metadata or {})[name])
        if not selection.values:
            return f"the event's metadata has no {name!r}; the subscription wants {expected}"
        return f"the event's metadata {name!r} is {_values(selection.values)}, not {expected}"
    entry = (filters.payload or [])[int(field.removeprefix("filters.payload[").removesuffix("]"))]
    if isinstance(entry, str):
        return f"the query {entry} selects nothing in the event's data"
    written = _condition(entry)
    if not selection.values:
        return f"{written}: {entry.path} selects nothing in the event's data"
    return f"{written} fails: the event's data has {_values(selection.values)} there"


def _condition(condition: PayloadCondition) -> str:
    if condition.op == "exists":
        return f"{condition.path} exists"
    return f"{condition.path} {condition.op} {_shown(condition.value)}"


def _values(values: Sequence[object]) -> str:
    shown = ", ".join(_shown(value) for value in values[:SHOWN_VALUES])
    more = len(values) - SHOWN_VALUES
    return shown + (f" (and {more} more)" if more > 0 else "")


def _shown(value: object) -> str:
    text = readable(json.dumps(value, ensure_ascii=False, default=repr))
    return text if len(text) <= SHOWN_CHARACTERS else text[: SHOWN_CHARACTERS - 1] + "…"


def readable(text: str) -> str:
    """``text`` as UTF-8 can carry it: an event may hold a lone surrogate escape
    (JSON allows ``"\ud800"``), which no response or terminal can encode."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
