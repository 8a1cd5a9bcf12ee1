"""Dispatch jobs: one per (event, matching subscription), with an id that says which.

The id is a function of the pair alone, so re-processing an event, any number of
times and on any instance, names the same job, and the store's unique index
turns the second write into nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from hashlib import blake2b

from processor.models import PENDING, DispatchJob, Event, Subscription


def job_id(event_id: str, subscription_id: str) -> str:
    """32 hex digits of a hash of the pair; the length prefix keeps pairs apart
    (``("ab", "c")`` and ``("a", "bc")`` hash differently)."""
    key = f"{len(event_id)}:{event_id}{subscription_id}".encode()
    return blake2b(key, digest_size=16).hexdigest()


def create_jobs(event: Event, subscriptions: Iterable[Subscription], now: datetime) -> list[DispatchJob]:
    return [
        DispatchJob(
            id=job_id(event.id, subscription.id),
            event_id=event.id,
            subscription_id=subscription.id,
            client_id=event.client_id,
            status=PENDING,
            target=subscription.target,
            pool_code=subscription.pool_code,
            scheduled_at=now,
            attempts=0,
            last_attempt_at=None,
            last_error=None,
            created_at=now,
        )
        for subscription in subscriptions
    ]
