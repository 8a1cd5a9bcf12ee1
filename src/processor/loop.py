"""The processor loop: events in, dispatch jobs out, one batch at a time.

    read a batch -> bring subscriptions up to date -> match -> commit -> repeat

Everything that can fail against the store is retried with capped exponential
backoff and jitter, and nothing moves on until the batch is committed: the
resume token only ever follows work that was written. One bad event is
dead-lettered; it never stops the batch around it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import tenacity

from processor.health import Health
from processor.jobs import create_jobs
from processor.matching import SubscriptionMatcher
from processor.metrics import Metrics
from processor.models import DeadLetter, DispatchJob, Event, InvalidEvent
from processor.store import (
    Batch,
    CommitReport,
    FeedEntry,
    Fenced,
    ProcessedBatch,
    Store,
    StoreMisconfigured,
    SubscriptionChange,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class Stopped(Exception):
    """The processor was asked to stop while it waited to retry."""


@dataclass(frozen=True)
class Settings:
    batch_size: int = 100  # FC_STREAM_BATCH_SIZE
    max_wait: float = 0.5  # seconds a read waits for the first event of a batch
    backoff_initial: float = 0.05
    backoff_max: float = 10.0


class Processor:
    def __init__(
        self,
        store: Store,
        settings: Settings | None = None,
        metrics: Metrics | None = None,
        health: Health | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.settings = settings or Settings()
        self.metrics = metrics or Metrics()
        self.health = health or Health()
        self.matcher = SubscriptionMatcher()
        self._pending: deque[SubscriptionChange] = deque()  # changes for events not yet read
        self._lease: Callable[[], bool] = lambda: True
        self.stop_requested = threading.Event()
        self._clock = clock
        self._retrying: dict[str, tenacity.Retrying] = {}

    def stop(self) -> None:
        self.stop_requested.set()

    def run(self, lease: Callable[[], bool] = lambda: True, epoch: int | None = None) -> None:
        """Process batches until ``stop()``, or until ``lease()`` says this instance
        no longer leads; returns once the current batch is committed or dropped.
        A leader passes its fencing ``epoch``, under which it claims the token."""
        self._lease = lease
        self.matcher = SubscriptionMatcher()  # the feed's start decides what subscriptions apply
        self._pending.clear()
        try:
            if epoch is not None:
                self.retry("claim the resume token", self.store.fence, epoch)
            token = self.retry("load resume token", self.store.resume_token)
            feed = self.retry("open feed", self.store.open_feed, token)
        except (Stopped, Fenced):
            return
        log.info("processing events after %s", token or "the current point")
        try:
            while self._may_continue():
                batch = self.retry("read", feed.next_batch, self.settings.batch_size, self.settings.max_wait)
                self.health.connected()
                if not lease():
                    break  # paused or cut off past the lease: leave this batch to the new leader
                if batch.entries or batch.resume_token != token:
                    self.process(batch)
                    token = batch.resume_token
        except Stopped:
            pass
        except Fenced as error:
            log.warning("stepping down: %s", error)
        finally:
            feed.close()

    def _may_continue(self) -> bool:
        return not self.stop_requested.is_set() and self._lease()

    def process(self, batch: Batch) -> CommitReport:
        started = time.perf_counter()
        # Read after the batch: every subscription committed before its events is seen.
        self._pending.extend(self.retry("load subscriptions", self.store.subscription_changes))
        now = self._clock()
        events: list[Event] = []
        jobs: list[DispatchJob] = []
        dead_letters: list[DeadLetter] = []
        for entry in batch.entries:
            # Subscriptions as they stood when this event was inserted.
            while self._pending and self._pending[0].effective_after < entry.order:
                self.matcher.apply(self._pending.popleft(), self.metrics)
            try:
                event = entry.event()
                matched = self.matcher.match(event)
            except InvalidEvent as error:
                dead_letters.append(self._dead_letter(entry, error))
                continue
            except Exception as error:  # a bug must not stop the stream: keep the event, say so
                log.exception("matching the event at %s failed", entry.position)
                dead_letters.append(
                    self._dead_letter(entry, InvalidEvent(f"matching failed: {error!r}", "unmatchable"))
                )
                continue
            events.append(event)
            jobs.extend(create_jobs(event, matched, now))
        report = self.retry(
            "commit",
            self.store.commit,
            ProcessedBatch(events, jobs, dead_letters, batch.resume_token),
        )
        self._measure(batch, events, jobs, report, time.perf_counter() - started)
        return report

    def _dead_letter(self, entry: FeedEntry, error: InvalidEvent) -> DeadLetter:
        log.error("event at %s skipped and dead-lettered: %s", entry.position, error)
        self.metrics.events_dead_lettered.labels(error.kind).inc()
        return DeadLetter(
            position=entry.position,
            event_id=entry.event_id if isinstance(entry.event_id, str) else None,
            reason=str(error),
            raw=entry.raw(),
            received_at=entry.received_at,
        )

    def _measure(
        self,
        batch: Batch,
        events: list[Event],
        jobs: list[DispatchJob],
        report: CommitReport,
        seconds: float,
    ) -> None:
        m = self.metrics
        m.events_processed.inc(len(batch.entries))
        m.subscriptions_matched.inc(len(jobs))
        m.jobs_created.inc(report.jobs_created)
        m.duplicate_jobs.inc(report.duplicates)
        m.processing_duration.observe(seconds)
        m.subscriptions_active.set(len(self.matcher))
        lag = 0.0
        if batch.entries and len(batch.entries) >= self.settings.batch_size:
            newest = batch.entries[-1].received_at  # more are waiting: report how far behind
            lag = max(0.0, (self._clock() - newest).total_seconds())
        m.lag.set(lag)
        if batch.resume_token is not None:
            m.token_saved()
        self.health.batch_done(len(batch.entries), lag)

    def _pause(self, seconds: float) -> None:
        self.stop_requested.wait(seconds)

    def retry(self, operation: str, call: Callable[..., T], *args: object) -> T:
        """``call(*args)`` until it succeeds, backing off between failures; a stop
        request or the end of the lease ends the wait (``Stopped``)."""
        retrying = self._retrying.get(operation)
        if retrying is None:  # built once per operation: it is in the path of every batch
            retrying = self._retrying[operation] = self._retrying_for(operation)
        try:
            result = retrying(call, *args)
        except (StoreMisconfigured, Fenced):
            raise
        except Exception:
            if not self._may_continue():
                raise Stopped from None
            raise
        if retrying.statistics.get("attempt_number", 1) > 1 and operation == "read":
            self.metrics.reconnects.inc()  # the feed answers again after failing
        return result

    def _retrying_for(self, operation: str) -> tenacity.Retrying:
        def note_failure(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            self.metrics.store_errors.labels(operation, type(error).__name__).inc()
            self.health.failed(operation, error)
            log.warning(
                "%s failed (attempt %d), retrying in %.2fs: %s",
                operation,
                state.attempt_number,
                state.next_action.sleep if state.next_action else 0.0,
                error,
            )

        return tenacity.Retrying(
            retry=tenacity.retry_if_not_exception_type((StoreMisconfigured, Fenced)),
            # "Full jitter": a random wait up to the capped exponential, so that
            # instances that failed together do not retry together.
            wait=tenacity.wait_random_exponential(
                multiplier=self.settings.backoff_initial, max=self.settings.backoff_max
            ),
            stop=lambda state: not self._may_continue(),
            sleep=self._pause,
            before_sleep=note_failure,
            reraise=True,
        )
