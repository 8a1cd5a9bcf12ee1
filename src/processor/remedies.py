"""Re-drive and backfill: the operator's ways to make the jobs the stream did not.

- ``redrive_dead_letters``: dead letters whose event is valid now (its
  producer was fixed, and the stored event mended) become jobs, and go;
- ``retry_filter_failures``: pairs whose filter failed are judged again, and go
  once the filter gives an answer (a job when it matches);
- ``backfill``: one subscription's jobs for past events, as it stands now.

Each matches as the loop does (``processor.explain.Judge``: the subscriptions
as they stand now, not as they stood when the events were inserted), works a
page at a time through a store's ``Repairs`` role, beside a live processor and
without touching its position, and can be stopped between pages and resumed
from the ``next`` it reports. Job ids are the pairs', so a second run creates
nothing the first did.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from processor.explain import Judge, Unreadable, readable
from processor.jobs import create_jobs
from processor.loop import MAX_REASON
from processor.models import DispatchJob, Event, FilterFailure, InvalidEvent, Subscription
from processor.projections import EventKey, event_key
from processor.stores.base import FeedEntry, Repair, Repairs

PAGE = 500  # items read, and repaired in one write, at a time
MAX_REASONS = 20  # distinct reasons a report keeps: what is left is counted, whatever it is


class NotBackfillable(ValueError):
    """The subscription exists, but a backfill cannot serve it as it stands:
    the processor skips it (invalid), or it is inactive."""


@dataclass
class Report:
    """What a run did: items ``examined`` (dead letters, filter failures or
    events), jobs ``created`` and ``skipped`` (they existed already), items
    ``resolved`` (removed) and ``left`` (still failing, counted by reason);
    ``next``: where a run that stopped before the end resumes (None: it ended)."""

    examined: int = 0
    created: int = 0
    skipped: int = 0
    resolved: int = 0
    left: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    next: str | None = None
    as_of: datetime = field(default_factory=lambda: datetime.now(UTC))

    def document(self) -> dict[str, Any]:
        """The report as JSON: what the API answers and the command prints."""
        return {
            "examined": self.examined,
            "created": self.created,
            "skipped": self.skipped,
            "resolved": self.resolved,
            "left": self.left,
            "reasons": dict(self.reasons.most_common()),
            "next": self.next,
            "subscriptions_as_of": self.as_of.isoformat(),
            "note": "matched against the subscriptions as they stood at subscriptions_as_of",
        }

    def leave(self, reason: str) -> None:
        reason = readable(reason)
        self.left += 1
        if reason in self.reasons or len(self.reasons) < MAX_REASONS:
            self.reasons[reason] += 1
        else:
            self.reasons["(other reasons)"] += 1


@dataclass(frozen=True)
class Limits:
    """When a run stops before the end: ``items`` read (an API call's
    bound), or ``stop`` set (a signal); ``progress`` hears of every page."""

    items: int | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    progress: Callable[[Report], None] = lambda report: None


class _Run:
    """One run's pages: what it writes, and when it stops."""

    def __init__(self, repairs: Repairs, limits: Limits, subscription_id: str | None = None) -> None:
        self.repairs = repairs
        self.limits = limits
        self.report = Report()
        self.now = self.report.as_of
        changes = repairs.current_subscriptions()
        if subscription_id is not None:  # a backfill's: compiling the others would be time lost
            changes = [change for change in changes if change.subscription_id == subscription_id]
        self.judge = Judge(changes)

    def pages(
        self, read: Callable[[str | None], list[Any]], key: Callable[[Any], str], after: str | None
    ) -> Iterator[list[Any]]:
        """Pages after ``after`` until the end, a stop, or ``Limits.items`` read
        (the page that reaches it is cut there); ``report.next`` says where a
        run that stopped before the end would resume."""
        limit, taken = self.limits.items, 0
        while True:
            if self.limits.stop.is_set() or (limit is not None and taken >= limit):
                self.report.next = after
                return
            size = PAGE if limit is None else min(PAGE, limit - taken)
            page = read(after)[:size]
            if not page:
                return
            yield page
            taken += len(page)
            after = key(page[-1])
            self.limits.progress(self.report)

    def write(self, repair: Repair, resolved: int = 0) -> None:
        if repair.jobs or repair.events or repair.letters or repair.failures or repair.filter_failures:
            written = self.repairs.repair(repair)
            self.report.created += written.jobs_created
            self.report.skipped += written.duplicates
        self.report.resolved += resolved

    def failure(self, event_id: str, client_id: str, subscription_id: str, error: Exception) -> FilterFailure:
        reason = f"{type(error).__name__}: {error}"[:MAX_REASON]
        return FilterFailure(event_id, subscription_id, client_id, reason, self.now)


def redrive_dead_letters(
    repairs: Repairs,
    *,
    reason: str | None = None,
    event_id: str | None = None,
    after: str | None = None,
    limits: Limits | None = None,
) -> Report:
    """Process dead letters again (those whose reason contains ``reason``, or of
    ``event_id``, or all): the event read again from the store, jobs for the
    subscriptions that match it now, the letter removed. One still invalid, or
    whose event is gone, is left, with why."""
    run = _Run(repairs, limits or Limits())
    read = partial(repairs.dead_letters, limit=PAGE, event_id=event_id)
    for page in run.pages(read, lambda s: s.key, after):
        jobs: list[DispatchJob] = []
        events: list[EventKey] = []
        failures: list[FilterFailure] = []
        letters: list[str] = []
        orders: dict[str, int] = {}
        for stored in page:
            letter = stored.letter
            if reason is not None and reason not in letter.reason:
                continue
            run.report.examined += 1
            entry = repairs.letter_event(letter)
            if entry is None:
                run.report.leave("its event is no longer stored (or it has no id to find it by)")
                continue
            try:
                event = entry.event()
                matched, failed = run.judge.match(event)
            except InvalidEvent as error:
                run.report.leave(f"still invalid: {error}"[:MAX_REASON])
                continue
            jobs += create_jobs(event, matched, run.now)
            failures += (run.failure(event.id, event.client_id, s.id, error) for s, error in failed)
            events.append(event_key(entry.order, event))
            orders[event.id] = entry.order
            letters.append(stored.key)
        run.write(Repair(jobs, events, failures, letters, orders=orders), resolved=len(letters))
    return run.report


def retry_filter_failures(
    repairs: Repairs,
    *,
    subscription_id: str | None = None,
    event_id: str | None = None,
    after: str | None = None,
    limits: Limits | None = None,
) -> Report:
    """Judge recorded filter failures again (of ``subscription_id``, of
    ``event_id``, or all): a pair whose filter now matches gets its job, and
    one that does not match (or whose subscription is gone or inactive: no job
    is due) is resolved too; one that still fails is left."""
    run = _Run(repairs, limits or Limits())
    read = partial(repairs.filter_failures, limit=PAGE, event_id=event_id, subscription_id=subscription_id)
    for page in run.pages(read, lambda s: s.key, after):
        jobs: list[DispatchJob] = []
        resolved: list[str] = []
        verdicts: dict[str, _Verdicts] = {}
        orders: dict[str, int] = {}
        for stored in page:
            failure = stored.failure
            run.report.examined += 1
            if failure.event_id not in verdicts:  # an event's pairs are judged at once
                entry = repairs.event(failure.event_id)
                verdicts[failure.event_id] = _judged(run.judge, entry)
                if entry is not None:
                    orders[failure.event_id] = entry.order
            event, wanted, failing = verdicts[failure.event_id]
            if event is None:
                run.report.leave("its event is no longer stored, or is invalid now")
            elif failure.subscription_id in failing:
                error = failing[failure.subscription_id]
                run.report.leave(f"still fails: {type(error).__name__}: {error}"[:MAX_REASON])
            else:
                matched = wanted.get(failure.subscription_id)
                jobs += create_jobs(event, [matched] if matched else [], run.now)
                resolved.append(stored.key)
        run.write(Repair(jobs, failures=resolved, orders=orders), resolved=len(resolved))
    return run.report


_Verdicts = tuple[Event | None, dict[str, Subscription], dict[str, Exception]]


def _judged(judge: Judge, entry: FeedEntry | None) -> _Verdicts:
    """The event of ``entry``, the subscriptions it matches and those it fails, by id."""
    if entry is None:
        return None, {}, {}
    try:
        event = entry.event()
        matched, failed = judge.match(event)
    except InvalidEvent:
        return None, {}, {}
    return event, {s.id: s for s in matched}, {s.id: error for s, error in failed}


def backfill(
    repairs: Repairs,
    subscription_id: str,
    *,
    since: datetime | None = None,
    after: str | None = None,
    limits: Limits | None = None,
) -> Report:
    """Create ``subscription_id``'s missing jobs for the stored events, from the
    first inserted at ``since`` (or after the position ``after``, or from the
    start), as the subscription stands now. Only its client's events are
    ``examined``; its invalid ones are left (they are dead letters already); a
    filter that fails is recorded, as the loop does.
    ``LookupError`` for an unknown subscription, ``NotBackfillable`` for one
    it cannot serve, ``ValueError`` for an ``after`` that is no position."""
    run = _Run(repairs, limits or Limits(), subscription_id)
    held = run.judge.held.get(subscription_id)
    if held is None:
        raise LookupError(f"no subscription with id {subscription_id!r}")
    if isinstance(held, Unreadable):
        raise NotBackfillable(f"subscription {subscription_id!r} is skipped by the processor: {held.reason}")
    if not held.active:
        raise NotBackfillable(f"subscription {subscription_id!r} is inactive: activate it first")
    for page in run.pages(lambda cursor: repairs.events(cursor, since, PAGE), lambda e: e.position, after):
        jobs: list[DispatchJob] = []
        failures: list[FilterFailure] = []
        orders: dict[str, int] = {}
        for entry in page:
            if (entry.document or {}).get("client_id", held.client_id) != held.client_id:
                continue  # another client's event, valid or not: none of this backfill's business
            run.report.examined += 1
            try:
                event = entry.event()
            except InvalidEvent:
                run.report.leave("the event is invalid (a dead letter)")
                continue
            matched, failed = run.judge.match(event)
            jobs += create_jobs(event, matched, run.now)
            orders[event.id] = entry.order
            for subscription, error in failed:
                failures.append(run.failure(event.id, event.client_id, subscription.id, error))
                run.report.leave("its filter could not be evaluated (recorded as a filter failure)")
        run.write(Repair(jobs, filter_failures=failures, orders=orders))
    return run.report
