"""The processor loop: events in, dispatch jobs out, one batch at a time.

    read a batch -> bring subscriptions up to date -> match -> commit -> repeat

The projections are counted by the ``Projector``, which rides along: what
it says is due goes into the commit, and at start it counts what the last run
left uncounted.

Everything that can fail against the store is retried with capped exponential
backoff and jitter, and nothing moves on until the batch is committed: the
resume token only ever follows work that was written. One bad event is
dead-lettered; it never stops the batch around it. One filter that fails on
an event fails that pair alone: it is recorded as a filter failure, and the
event's other subscriptions get their jobs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import tenacity

from processor.health import Health
from processor.jobs import create_jobs
from processor.matching import SubscriptionMatcher
from processor.metrics import Metrics
from processor.models import DeadLetter, DispatchJob, Event, FilterFailure, InvalidEvent, Subscription
from processor.projections import EventKey, Projector, event_key
from processor.retry import policy
from processor.stores.base import (
    BATCH_BYTES,
    Batch,
    ChangeFeed,
    CommitReport,
    FeedEntry,
    Fenced,
    ProcessedBatch,
    ResumeToken,
    Store,
    StoreMisconfigured,
    StoreUnavailable,
    SubscriptionChange,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
FAILURE_LOG_INTERVAL = timedelta(minutes=1)  # a subscription's filter failures are logged this seldom
MAX_REASON = 1000  # characters of an error kept as the reason of a filter failure


class Stopped(Exception):
    """The processor was asked to stop while it waited to retry."""


@dataclass(frozen=True)
class Settings:
    batch_size: int = 100  # FC_STREAM_BATCH_SIZE
    batch_bytes: int = BATCH_BYTES  # FC_STREAM_BATCH_BYTES
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
        self.projector = Projector(store)
        self._pending: deque[SubscriptionChange] = deque()  # changes for events not yet read
        self._lease: Callable[[], bool] = lambda: True
        self.stop_requested = threading.Event()
        self._clock = clock
        self._retrying: dict[str, tenacity.Retrying] = {}
        self._failures_logged: dict[str, tuple[datetime, int]] = {}  # by subscription: when, suppressed since

    def stop(self) -> None:
        self.stop_requested.set()

    def run(
        self, lease: Callable[[], bool] = lambda: True, epoch: int | None = None, holder: str = ""
    ) -> Fenced | None:
        """Process batches until ``stop()``, or until ``lease()`` says this instance
        no longer leads; returns once the current batch is committed or dropped.
        A leader passes its fencing ``epoch`` and the lock's ``holder``, under
        which it claims the store; it returns the ``Fenced`` that stopped it, if one did."""
        self._lease = lease
        self.matcher = SubscriptionMatcher()  # the feed's start decides what subscriptions apply
        self._pending.clear()
        health = self.health
        health.step("opening the feed")
        try:
            try:
                if epoch is not None:
                    self.retry("claim the resume token", self.store.fence, epoch, holder)
                token = self.retry("load resume token", self.store.resume_token)
                feed = self.retry("open feed", self.store.open_feed, token)
            except Stopped:
                return None
            except Fenced as error:
                log.warning("not leading: %s", error)
                return error
            try:
                return self._consume(feed, token, lease)
            finally:
                feed.close()
        finally:
            health.rest()

    def _consume(
        self, feed: ChangeFeed, token: ResumeToken | None, lease: Callable[[], bool]
    ) -> Fenced | None:
        settings, health = self.settings, self.health
        try:
            self.retry("count what the last run left", self.projector.recount)
            log.info("processing events after %s", token or "the current point")
            while self._may_continue():
                health.step(f"reading the feed after {token or 'its start'}")
                batch = self.retry(
                    "read", feed.next_batch, settings.batch_size, settings.max_wait, settings.batch_bytes
                )
                health.connected()
                if not lease():
                    break  # paused or cut off past the lease: leave this batch to the new leader
                if batch.entries or batch.resume_token != token:
                    self.process(batch)
                    token = batch.resume_token
                else:  # nothing new: caught up, whatever the size of the last batch
                    self.metrics.lag.set(0)
                    health.caught_up()
                    self._count_what_waits()
            if self.stop_requested.is_set() and lease():
                # Asked to stop: what waits is counted now, so that the projections
                # are current once the process has gone, not only at its next start.
                self._count_what_waits()
        except Stopped:
            pass
        except Fenced as error:
            log.warning("stepping down: %s", error)
            return error
        return None

    def _count_what_waits(self) -> None:
        with suppress(StoreUnavailable):  # tried again at the next read that finds nothing, or the next start
            self.projector.flush()

    def _may_continue(self) -> bool:
        return not self.stop_requested.is_set() and self._lease()

    def process(self, batch: Batch) -> CommitReport:
        started = time.perf_counter()
        if batch.history_lost:
            self.metrics.lost_history.inc()
        # Read after the batch: every subscription committed before its events is seen.
        self._pending.extend(self.retry("load subscriptions", self.store.subscription_changes))
        now = self._clock()
        events: list[EventKey] = []  # the valid events, as the projections count them
        jobs: list[DispatchJob] = []
        dead_letters: list[DeadLetter] = []
        failures: list[FilterFailure] = []
        orders: dict[str, int] = {}  # each valid event's place in the feed
        health = self.health
        health.step("processing")
        for entry in batch.entries:
            health.at(entry.position)  # what a stall names
            # Subscriptions as they stood when this event was inserted.
            while self._pending and self._pending[0].effective_after < entry.order:
                if not self.matcher.apply(self._pending.popleft()):
                    self.metrics.subscriptions_invalid.inc()
            try:
                event = entry.event()
                matched, failed = self.matcher.match(event)
            except InvalidEvent as error:
                dead_letters.append(self._dead_letter(entry, error))
                continue
            except Exception as error:  # a bug must not stop the stream: keep the event, say so
                log.exception("matching the event at %s failed", entry.position)
                dead_letters.append(
                    self._dead_letter(entry, InvalidEvent(f"matching failed: {error!r}", "unmatchable"))
                )
                continue
            events.append(event_key(entry.order, event))
            orders[event.id] = entry.order
            jobs.extend(create_jobs(event, matched, now))
            if failed:
                failures += (
                    self._filter_failed(event, subscription, error, now) for subscription, error in failed
                )
        health.step(
            f"committing the batch that ends at {batch.entries[-1].position}"
            if batch.entries
            else "committing"
        )
        tally = self.projector.due(batch, events, jobs)
        report = self.retry(
            "commit",
            self.store.commit,
            ProcessedBatch(jobs, dead_letters, batch.resume_token, failures, tally, orders),
        )
        self.projector.committed(batch, events, report, counted=tally is not None)
        self._measure(batch, jobs, report, time.perf_counter() - started)
        return report

    def _dead_letter(self, entry: FeedEntry, error: InvalidEvent) -> DeadLetter:
        log.error("event at %s skipped and dead-lettered: %s", entry.position, error)
        self.metrics.events_dead_lettered.labels(error.kind).inc()
        event_id = entry.event_id if isinstance(entry.event_id, str) else None
        try:
            return DeadLetter.of(entry.position, event_id, str(error), entry.raw(), entry.received_at)
        except Exception as unreadable:  # the record changed or went since it was read: keep the reason
            raw = [f"(the raw document could not be read again: {unreadable!r})"]
            return DeadLetter.of(entry.position, event_id, str(error), raw, entry.received_at)

    def _filter_failed(
        self, event: Event, subscription: Subscription, error: Exception, now: datetime
    ) -> FilterFailure:
        """Counted every time; logged once a minute at most per subscription, since
        a broken filter fails on every event of its type."""
        kind = type(error).__name__
        self.metrics.filter_failures.labels(kind).inc()
        reason = f"{kind}: {error}"[:MAX_REASON]
        logged = self._failures_logged
        if len(logged) > 10_000:  # forget the subscriptions that have not failed for a while
            for key in [key for key, (at, _) in logged.items() if now - at >= FAILURE_LOG_INTERVAL]:
                del logged[key]
        last, suppressed = logged.get(subscription.id, (None, 0))
        if last is None or now - last >= FAILURE_LOG_INTERVAL:
            log.error(
                "the filter of subscription %r failed on event %r, which it does not receive: %s%s",
                subscription.id,
                event.id,
                reason,
                f" ({suppressed} more failures of it since the last one logged)" if suppressed else "",
            )
            logged[subscription.id] = (now, 0)
        else:
            logged[subscription.id] = (last, suppressed + 1)
        return FilterFailure(event.id, subscription.id, event.client_id, reason, now)

    def _measure(
        self,
        batch: Batch,
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
        if batch.entries and batch.more:
            newest = batch.entries[-1].received_at  # more are waiting: report how far behind
            lag = max(0.0, (self._clock() - newest).total_seconds())
        m.lag.set(lag)
        if batch.resume_token is not None:
            m.token_saved()
        self.health.batch_done(len(batch.entries), lag)

    def _pause(self, seconds: float) -> None:
        self.health.pause()  # waiting to retry is not a stall
        self.stop_requested.wait(seconds)
        self.health.resume()

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
        return policy(
            operation,
            initial=self.settings.backoff_initial,
            cap=self.settings.backoff_max,
            may_continue=self._may_continue,
            pause=self._pause,
            failed=self._failed,
        )

    def _failed(self, operation: str, error: BaseException | None) -> None:
        self.metrics.store_errors.labels(operation, type(error).__name__).inc()
        self.health.failed(operation, error)
