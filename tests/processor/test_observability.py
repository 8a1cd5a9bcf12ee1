"""Metrics scraped over HTTP from a running processor, and a health endpoint that
tells the truth."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from processor.config import Thresholds
from processor.health import Health
from processor.loop import Processor
from processor.ops import OpsServer, listen, ops_app
from processor.stores.base import (
    BATCH_BYTES,
    Batch,
    CommitReport,
    ProcessedBatch,
    StoreUnavailable,
    SubscriptionChange,
)
from processor.stores.sqlite import SqliteStore
from tests.processor.harness import FAST, Clock, Publisher, answers, free_port, spawn_processor, wait_until

SHIPPED = "orders:fulfillment:shipment:shipped"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, parsed by prometheus-client's own parser."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_of_a_running_processor_count_a_known_workload(tmp_path: Path) -> None:
    db, log, port = tmp_path / "store.db", tmp_path / "processor.log", free_port()
    publisher = Publisher(db)
    publisher.subscribe("orders", "orders:*:*:*")
    publisher.subscribe("shipped", "*:*:*:shipped")
    publisher.subscribe("billing", "billing:*:*:*")
    with spawn_processor(db, log, FC_METRICS_PORT=str(port)):
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/live"), message=f"/live; log: {log}")
        wait_until(lambda: publisher.token() is not None, message="the feed to open")
        for _ in range(7):
            publisher.publish(SHIPPED)  # orders + shipped
        for _ in range(3):
            publisher.publish("billing:invoice:line:added")  # billing
        publisher.publish("inventory:stock:item:counted")  # nobody
        publisher.publish("orders:bad")
        publisher.publish(SHIPPED, client_id=None)
        wait_until(publisher.caught_up, message="the workload")
        wait_until(lambda: scrape(port)[("fc_stream_events_processed_total", ())] == 13)
        samples = scrape(port)
    assert samples[("fc_stream_dispatch_jobs_created_total", ())] == 17
    assert samples[("fc_stream_subscriptions_matched_total", ())] == 17
    assert samples[("fc_stream_duplicate_jobs_suppressed_total", ())] == 0
    assert samples[("fc_stream_events_dead_lettered_total", (("reason", "invalid_type"),))] == 1
    assert samples[("fc_stream_events_dead_lettered_total", (("reason", "invalid_client_id"),))] == 1
    assert samples[("fc_stream_change_stream_lag_seconds", ())] == 0.0
    assert samples[("fc_stream_subscriptions_active", ())] == 3
    assert samples[("fc_stream_leader", ())] == 1
    assert samples[("fc_stream_processing_duration_seconds_count", ())] >= 1
    token_age = samples[("fc_stream_resume_token_age_seconds", ())]
    assert not math.isnan(token_age) and 0 <= token_age < 60


class VanishingStore(SqliteStore):
    """The real embedded store, that can be made to fail as an unreachable one does."""

    gone = False

    def _check(self) -> None:
        if self.gone:
            raise StoreUnavailable("store unreachable (test)")

    def subscription_changes(self) -> list[SubscriptionChange]:
        self._check()
        return super().subscription_changes()

    def commit(self, batch: ProcessedBatch) -> CommitReport:
        self._check()
        return super().commit(batch)

    def open_feed(self, resume_after: str | None) -> VanishingFeed:  # type: ignore[override]
        return VanishingFeed(self, super().open_feed(resume_after))


class VanishingFeed:
    def __init__(self, store: VanishingStore, feed: object) -> None:
        self._store, self._feed = store, feed

    def next_batch(self, max_events: int, max_wait: float, max_bytes: int = BATCH_BYTES) -> Batch:
        self._store._check()
        return self._feed.next_batch(max_events, max_wait, max_bytes)  # type: ignore[attr-defined, no-any-return]

    def close(self) -> None:
        self._feed.close()  # type: ignore[attr-defined]


@pytest.fixture
def served(db: Path, publisher: Publisher) -> Iterator[tuple[VanishingStore, str]]:
    store = VanishingStore(db)
    health = Health(Thresholds(disconnected_grace=0.3, window=5.0))
    processor = Processor(store, FAST, health=health)
    listener = listen("127.0.0.1", 0)
    port = listener.getsockname()[1]
    app = ops_app(processor.metrics, health, alive=lambda: True)
    thread = threading.Thread(target=processor.run, daemon=True)
    with OpsServer(app, listener):
        thread.start()
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers(f"{base}/live"), message="the ops server")
        yield store, base
        processor.stop()
        thread.join(timeout=10)
    store.close()


def test_health_says_503_when_the_store_disappears_and_200_when_it_returns(
    served: tuple[VanishingStore, str], publisher: Publisher
) -> None:
    store, base = served
    publisher.subscribe("all", "*:*:*:*")
    wait_until(lambda: httpx.get(f"{base}/health").status_code == 200, message="UP")
    report = httpx.get(f"{base}/health").json()
    assert report["role"] == "single" and report["change_stream"]["connected"] is True
    assert set(report) >= {"lag_seconds", "error_rate", "last_batch_at", "status"}

    store.gone = True
    wait_until(lambda: httpx.get(f"{base}/health").status_code == 503, message="DOWN")
    wait_until(
        lambda: any("store unreachable" in r for r in httpx.get(f"{base}/health").json()["reasons"]),
        message="the grace period to pass",
    )
    down = httpx.get(f"{base}/health").json()
    assert down["status"] == "DOWN" and down["change_stream"]["connected"] is False
    assert httpx.get(f"{base}/ready").status_code == 503
    assert httpx.get(f"{base}/live").status_code == 200, "a restart would not bring the store back"

    store.gone = False
    event = publisher.publish(SHIPPED)
    wait_until(lambda: httpx.get(f"{base}/health").status_code == 200, message="UP again")
    wait_until(publisher.caught_up)
    assert (event, "all") in publisher.jobs()


def test_health_judges_lag_error_rate_and_role_by_its_thresholds() -> None:
    clock = Clock()
    health = Health(Thresholds(max_lag=10, max_error_rate=0.5, window=60, min_operations=4), clock)
    health.batch_done(100, lag=3.0)
    assert health.report()["status"] == "UP"
    health.batch_done(100, lag=11.0)
    assert health.report()["reasons"] == ["lag 11s is over 10s"]
    health.batch_done(10, lag=0.0)
    for _ in range(4):
        health.failed("commit", StoreUnavailable("mongodb://app:hunter2@db.internal:27017 refused"))
        health.connected()
    assert health.report()["status"] == "UP", "4 failures in 11 operations"
    for _ in range(8):
        health.failed("commit", StoreUnavailable("timeout"))
    report = health.report()
    assert report["status"] == "DOWN" and "of store operations failed" in report["reasons"][-1]
    clock.now += 61
    health.connected()
    assert health.report()["error_rate"] == 0.0, "old failures leave the window"
    health.follow(lambda: "standby")
    health.failed("read", StoreUnavailable("mongodb://app:hunter2@db.internal:27017 refused"))
    clock.now += 100
    standby = health.report()
    assert standby["status"] == "UP" and standby["role"] == "standby"
    assert "hunter2" not in str(standby), "no credentials in the health document"


def test_a_step_of_processing_that_lasts_past_the_threshold_is_a_stall_that_names_where() -> None:
    clock = Clock()
    health = Health(Thresholds(stall=10), clock)
    health.connected()
    health.step("processing")
    health.at("42")
    clock.now += 10
    assert health.stall() is None and health.report()["status"] == "UP"
    clock.now += 1
    assert health.stall() == "stalled for 11s processing, at event 42"
    report = health.report()
    assert report["status"] == "DOWN" and report["stalled"] in report["reasons"]
    health.pause()  # waiting to retry a failing store: that has a reason of its own
    clock.now += 100
    assert health.stall() is None
    health.resume()
    clock.now += 11
    assert health.stall() == "stalled for 11s processing, at event 42", "the attempt that follows can stall"
    health.step("reading the feed after 42")
    assert health.stall() is None and health.report()["status"] == "UP"
    health.rest()  # stopped, or standing by: a retry that ends now resumes no step
    health.pause()
    health.resume()
    clock.now += 100
    assert health.stall() is None
