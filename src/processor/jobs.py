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
    # Positional, in the order of DispatchJob's fields: two jobs are built per event
    # in the hot loop, and twelve keywords take as long again as the rest of it.
    return [
        DispatchJob(
            job_id(event.id, subscription.id),  # id
            event.id,  # event_id
            subscription.id,  # subscription_id
            event.client_id,  # client_id
            PENDING,  # status
            subscription.target,  # target
            subscription.pool_code,  # pool_code
            now,  # scheduled_at
            0,  # attempts
            None,  # last_attempt_at
            None,  # last_error
            now,  # created_at
        )
        for subscription in subscriptions
    ]
