"""The processor's Prometheus metrics: the spec's five, under their exact names,
and what an operator needs beside them to act.

Each processor owns a registry, so that several can run in one process (tests,
``fc-dev``) without their counts mixing.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BATCH_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # The spec's metrics.
        self.events_processed = Counter(
            "fc_stream_events_processed", "Events read from the change feed and handled", registry=r
        )
        self.jobs_created = Counter(
            "fc_stream_dispatch_jobs_created", "Dispatch jobs written (new ones only)", registry=r
        )
        self.processing_duration = Histogram(
            "fc_stream_processing_duration_seconds",
            "Time to process one batch: match, write jobs and projections, persist the token",
            buckets=BATCH_SECONDS,
            registry=r,
        )
        self.lag = Gauge(
            "fc_stream_change_stream_lag_seconds",
            "Now minus the insert time of the newest event processed while more wait; 0 when caught up",
            registry=r,
        )
        self.subscriptions_matched = Counter(
            "fc_stream_subscriptions_matched", "(event, subscription) matches", registry=r
        )
        # What an operator needs beside them.
        self.events_dead_lettered = Counter(
            "fc_stream_events_dead_lettered",
            "Invalid events skipped and kept in the dead-letter collection, by reason",
            ["reason"],
            registry=r,
        )
        self.filter_failures = Counter(
            "fc_stream_filter_failures",
            "(event, subscription) pairs whose filter failed to evaluate, by error kind; not matched",
            ["kind"],
            registry=r,
        )
        self.duplicate_jobs = Counter(
            "fc_stream_duplicate_jobs_suppressed",
            "Jobs that existed already when written: replayed events",
            registry=r,
        )
        self.store_errors = Counter(
            "fc_stream_store_errors",
            "Store and Redis operations that failed and were retried, by operation and error kind",
            ["operation", "kind"],
            registry=r,
        )
        self.reconnects = Counter(
            "fc_stream_reconnects", "Times the change feed answered again after failing", registry=r
        )
        self.subscriptions_active = Gauge(
            "fc_stream_subscriptions_active", "Active subscriptions held by the matcher", registry=r
        )
        self.subscriptions_invalid = Counter(
            "fc_stream_subscriptions_invalid", "Stored subscriptions skipped as invalid", registry=r
        )

        self.driver_resumes = Counter(
            "fc_stream_driver_resumes",
            "MongoDB only: change stream reads that failed and that the driver resumed by itself",
            registry=r,
        )
        self.primary_changes = Counter(
            "fc_stream_primary_changes",
            "MongoDB only: times the primary the driver follows changed (a failover, a new election)",
            registry=r,
        )
        self.lost_history = Counter(
            "fc_stream_lost_history_recoveries",
            "Resume tokens found gone from the oplog; each is logged with the window caught up",
            registry=r,
        )

        self.leader = Gauge(
            "fc_stream_leader", "1 while this instance leads (or runs alone), 0 on standby", registry=r
        )
        self.leader.set(1)
        self._token_saved_at: float | None = None
        self.token_age = Gauge(
            "fc_stream_resume_token_age_seconds",
            "Seconds since the resume token was last persisted (NaN before the first time)",
            registry=r,
        )
        self.token_age.set_function(
            lambda: float("nan") if self._token_saved_at is None else time.time() - self._token_saved_at
        )

    def token_saved(self) -> None:
        self._token_saved_at = time.time()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
