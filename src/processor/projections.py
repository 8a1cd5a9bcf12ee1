"""Read models built alongside the jobs: event counts by type, per-subscription
and per-client activity.

The loop's ``Projector`` decides what is counted when: it keeps what was
committed and not counted yet, and hands it to the store in a ``Tally`` with
every batch once the feed has caught up, every few events while it is behind
(writing the read models with every batch cost the loop more than a tenth of
its time, for keys that mostly recur from one batch to the next), and at
start, what the last run committed and did not count. The store applies a
tally in one write with marks that say what it counted, so that nothing is
counted twice, whatever crashes or replays.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING

from processor.models import DispatchJob, Event, InvalidEvent

if TYPE_CHECKING:  # the store's contract speaks of tallies; a projector only calls it
    from processor.stores.base import Batch, CommitReport, FeedEntry, ProjectionSink, ResumeToken

EventKey = tuple[int, str, str, str, datetime]
"""What the projections need of an event: its position in the feed
(``FeedEntry.order``) and its id (by which stores mark it counted), its type,
client and time; what waits to be counted is kept as these, not as the events
and their payloads."""


def event_key(order: int, event: Event) -> EventKey:
    return order, event.id, event.type, event.client_id, event.time


_type = itemgetter(2)
_client = itemgetter(3)
_time = itemgetter(4)
_job_client = attrgetter("client_id")
_subscription = attrgetter("subscription_id")
_created = attrgetter("created_at")


@dataclass(frozen=True, slots=True)
class ProjectionDelta:
    """What some events and their jobs add: counts to add, and latest times to
    keep if later.

    Built by counting and mapping in C (``Counter``, ``dict(zip(...))``) rather
    than by a Python statement per event and per job: every event and job
    passes through here, and the statements were a large part of what the loop
    did beyond the store's own work."""

    event_types: Counter[str]
    subscription_jobs: Counter[str]
    last_matched_at: dict[str, datetime]  # by subscription
    client_events: Counter[str]
    client_jobs: Counter[str]
    last_event_time: dict[str, datetime]  # by client

    @classmethod
    def of(cls, events: Iterable[EventKey], jobs: Iterable[DispatchJob]) -> ProjectionDelta:
        # In order of time, so that each key's last entry in dict(zip(...)) is its latest.
        events = sorted(events, key=_time)
        jobs = sorted(jobs, key=_created)
        return cls(
            event_types=Counter(map(_type, events)),
            subscription_jobs=Counter(map(_subscription, jobs)),
            last_matched_at=dict(zip(map(_subscription, jobs), map(_created, jobs), strict=True)),
            client_events=Counter(map(_client, events)),
            client_jobs=Counter(map(_job_client, jobs)),
            last_event_time=dict(zip(map(_client, events), map(_time, events), strict=True)),
        )

    def subscription_rows(self) -> Iterator[tuple[str, int, datetime]]:
        """Per subscription: jobs created, and when the last was."""
        last = self.last_matched_at
        return ((key, jobs, last[key]) for key, jobs in self.subscription_jobs.items())

    def client_rows(self) -> Iterator[tuple[str, int, int, datetime | None]]:
        """Per client with events or jobs: events, jobs, and the time of the latest
        event (None when the client has jobs only)."""
        events, jobs, last = self.client_events, self.client_jobs, self.last_event_time
        clients = [*events, *(client for client in jobs if client not in events)]
        return ((client, events[client], jobs[client], last.get(client)) for client in clients)


@dataclass(frozen=True, slots=True)
class Tally:
    """Committed events and jobs, to be counted in one write.

    ``jobs``: those the commits that went before created, and those the batch
    in hand asks for (its commit knows which it creates). Each store counts
    what its marks say it has not counted: SQLite by position, MongoDB by id.
    ``through``: the position the events were committed up to."""

    events: list[EventKey] = field(default_factory=list)
    jobs: list[DispatchJob] = field(default_factory=list)
    through: ResumeToken | None = None


@dataclass(frozen=True, slots=True)
class Uncounted:
    """What a store holds committed and not counted, as a start finds it: the
    events between its marks (as the feed reads them, payloads left out) and
    the jobs created since the last count. ``through``: where the feed starts."""

    entries: Iterable[FeedEntry]
    jobs: list[DispatchJob]
    through: ResumeToken | None


class Projector:
    """The loop's side of the projections: what waits to be counted, and when
    it is due. ``fold_events`` comes from the store: how many events may wait
    (0: a store that could not count them after a crash counts every batch)."""

    def __init__(self, sink: ProjectionSink) -> None:
        self._sink = sink
        self._events: list[EventKey] = []
        self._jobs: list[DispatchJob] = []
        self._through: ResumeToken | None = None

    def recount(self) -> None:
        """Count what the last run committed and did not count; the entries are
        validated here, as the loop read them (those that were invalid then were
        dead-lettered, and are not counted)."""
        self._events, self._jobs, self._through = [], [], None
        uncounted = self._sink.uncounted()
        events = []
        for entry in uncounted.entries:
            with suppress(InvalidEvent):
                events.append(event_key(entry.order, entry.event()))
        self._sink.count(Tally(events, uncounted.jobs, uncounted.through))

    def due(self, batch: Batch, events: list[EventKey], jobs: list[DispatchJob]) -> Tally | None:
        """What to count with the commit of ``batch``: None while it may wait.
        A batch without a position comes again, and is counted then."""
        if batch.resume_token is None:
            return None
        waiting = len(self._events) + len(events)
        if batch.more and waiting < self._sink.fold_events:
            return None
        return Tally([*self._events, *events], [*self._jobs, *jobs], batch.resume_token)

    def committed(self, batch: Batch, events: list[EventKey], report: CommitReport, counted: bool) -> None:
        """``batch`` is committed, and counted with it or not; what waits keeps
        the jobs the commit created, not those that existed already."""
        if counted:
            self._events, self._jobs = [], []
        elif batch.resume_token is not None:
            self._events.extend(events)
            self._jobs.extend(report.created)
            self._through = batch.resume_token

    def flush(self) -> None:
        """The feed found nothing new: count what waits, so that idle projections
        are current. ``StoreUnavailable`` leaves it waiting for the next try;
        ``Fenced`` is for the loop to step down on."""
        if self._through is None or not (self._events or self._jobs):
            return
        self._sink.count(Tally(self._events, self._jobs, self._through))
        self._events, self._jobs, self._through = [], [], None
