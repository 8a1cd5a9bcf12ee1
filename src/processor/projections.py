"""Read models built alongside the jobs: event counts by type, per-subscription
and per-client activity.

The loop computes a batch's delta here and the store applies it in the same
write as the batch's jobs, so a batch that is replayed after a crash is never
counted twice.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from processor.models import DispatchJob, Event


@dataclass(slots=True)
class SubscriptionActivity:
    jobs_created: int = 0
    last_matched_at: datetime | None = None


@dataclass(slots=True)
class ClientActivity:
    events: int = 0
    jobs: int = 0
    last_event_time: datetime | None = None


def _later(current: datetime | None, candidate: datetime) -> datetime:
    return candidate if current is None or candidate > current else current


@dataclass(slots=True)
class ProjectionDelta:
    event_types: Counter[str] = field(default_factory=Counter)
    subscriptions: dict[str, SubscriptionActivity] = field(default_factory=dict)
    clients: dict[str, ClientActivity] = field(default_factory=dict)

    def add_event(self, event: Event) -> None:
        self.event_types[event.type] += 1
        client = self._client(event.client_id)
        client.events += 1
        client.last_event_time = _later(client.last_event_time, event.time)

    def add_job(self, job: DispatchJob) -> None:
        subscription = self.subscriptions.get(job.subscription_id)
        if subscription is None:
            subscription = self.subscriptions[job.subscription_id] = SubscriptionActivity()
        subscription.jobs_created += 1
        subscription.last_matched_at = _later(subscription.last_matched_at, job.created_at)
        self._client(job.client_id).jobs += 1

    def _client(self, client_id: str) -> ClientActivity:
        client = self.clients.get(client_id)
        if client is None:
            client = self.clients[client_id] = ClientActivity()
        return client
