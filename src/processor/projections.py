"""Read models built alongside the jobs: event counts by type, per-subscription
and per-client activity.

A store counts committed events and the jobs they created here, and applies the
delta to its read models in a write that also marks them counted: with each
batch (MongoDB), or with every few batches (the embedded store). A batch that
is replayed after a crash is never counted twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter, itemgetter

from processor.models import DispatchJob, Event

EventKey = tuple[str, str, datetime]
"""What the projections need of an event: its type, client and time; a store
that waits to count events keeps these, not the events and their payloads."""
event_key: Callable[[Event], EventKey] = attrgetter("type", "client_id", "time")

_type = itemgetter(0)
_client = itemgetter(1)
_time = itemgetter(2)
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
