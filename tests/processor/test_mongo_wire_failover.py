"""A failover at the wire: the primary steps down mid-batch (``NotWritablePrimary``
with its label, then a new election), the driver retries and resumes by
itself, and every due job is written exactly once; the metrics see what the
driver did, which the loop's own read errors cannot."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from pymongo.database import Database

from processor.config import Config
from processor.loop import Processor
from processor.metrics import Metrics
from processor.runner import open_store
from processor.stores.mongo import DriverEvents
from tests.fake_mongo import Document, sample
from tests.processor.harness import FAST, wait_until
from tests.processor.wire_documents import event, subscription
from tests.wire_mongo import WireMongo

NOT_WRITABLE_PRIMARY = 10107
DEADLINE = 30.0


@pytest.fixture
def processing(wire: WireMongo, metrics: Metrics) -> Iterator[Processor]:
    """The processor as the runner wires it for ``FC_MONGO_URL``, in a thread,
    past its start-up step and its first checkpoint."""
    store, prepare = open_store(
        Config(mongo_url=wire.uri, mongo_db=wire.engine.name, metrics_port=0), metrics
    )
    assert prepare is not None
    prepare()
    processor = Processor(store, FAST, metrics)
    thread = threading.Thread(target=processor.run, daemon=True)
    thread.start()
    wait_until(lambda: first_checkpoint(wire), DEADLINE, "the first checkpoint")
    yield processor
    processor.stop()
    thread.join(timeout=DEADLINE)
    assert not thread.is_alive(), "the processor did not stop"
    store.close()


def first_checkpoint(wire: WireMongo) -> bool:
    return bool(list(wire.engine.database["stream_checkpoints"].find({"checkpoint": {"$gt": ""}})))


def subscribe(database: Database[Document], *ids: str) -> None:
    database["subscriptions"].insert_many([subscription(id) for id in ids])


def publish(database: Database[Document], count: int) -> list[str]:
    documents = [event() for _ in range(count)]
    database["events"].insert_many(documents)
    return [str(d["_id"]) for d in documents]


def jobs(database: Database[Document]) -> list[tuple[str, str]]:
    return [(d["event_id"], d["subscription_id"]) for d in database["dispatch_jobs"].find()]


def test_a_primary_stepping_down_mid_batch_leaves_every_due_job_exactly_once(
    wire: WireMongo, database: Database[Document], metrics: Metrics, processing: Processor
) -> None:
    subscribe(database, "a", "b")
    stepped_down = threading.Event()

    def elect_another(command: str, body: Document) -> None:
        if command == "insert" and body.get("insert") == "dispatch_jobs" and not stepped_down.is_set():
            stepped_down.set()
            wire.elect()  # the member that refuses this write is no longer primary

    wire.when(elect_another)
    wire.fail_command(
        "insert", code=NOT_WRITABLE_PRIMARY, labels=["RetryableWriteError"], collection="dispatch_jobs"
    )
    events = publish(database, 5)
    due = sorted((event, subscription) for event in events for subscription in ("a", "b"))
    # The metrics are counted once the commit returns, after the jobs are visible.
    created = "fc_stream_dispatch_jobs_created_total"
    wait_until(lambda: sample(metrics, created) >= len(due), DEADLINE, "the jobs counted")
    wait_until(lambda: sample(metrics, "fc_stream_primary_changes_total") == 1, DEADLINE, "the election seen")
    assert sorted(jobs(database)) == due, "each once"
    assert sample(metrics, created) == len(due)
    assert sample(metrics, "fc_stream_duplicate_jobs_suppressed_total") == 0


@pytest.mark.parametrize("failure", ["a resumable error", "a dropped connection"])
def test_a_change_stream_read_the_driver_resumes_by_itself_is_counted(
    failure: str, wire: WireMongo, database: Database[Document], metrics: Metrics, processing: Processor
) -> None:
    subscribe(database, "a")
    if failure == "a resumable error":
        wire.fail_command(
            "getMore", code=NOT_WRITABLE_PRIMARY, labels=["ResumableChangeStreamError"], collection="events"
        )
    else:
        wire.fail_command("getMore", close_connection=True, collection="events")
    events = publish(database, 3)
    wait_until(lambda: sample(metrics, "fc_stream_events_processed_total") == 3, DEADLINE, "the events")
    assert sorted(jobs(database)) == sorted((event, "a") for event in events)
    assert sample(metrics, "fc_stream_driver_resumes_total") == 1
    assert sample(metrics, "fc_stream_store_errors_total", operation="read") == 0, "the loop never saw it"
    assert sample(metrics, "fc_stream_primary_changes_total") == 0, "the same primary throughout"


def test_a_stream_whose_resumes_meet_dropped_connections_too_loses_nothing_and_doubles_nothing(
    wire: WireMongo, database: Database[Document], metrics: Metrics, processing: Processor
) -> None:
    subscribe(database, "a")
    first = publish(database, 2)
    wait_until(lambda: len(jobs(database)) == 2, DEADLINE, "the first jobs")
    # The connection drops at a getMore, then at the driver's resume, its retry
    # and the loop's reopening: whichever of them gives up, the next one resumes
    # after the last event handed out.
    wire.fail_command("aggregate", close_connection=True, times=3, collection="events")
    wire.fail_command("getMore", close_connection=True, collection="events")
    later = publish(database, 3)
    wait_until(
        lambda: sample(metrics, "fc_stream_events_processed_total") == 5,
        DEADLINE,
        "the later events processed",
    )
    assert sorted(jobs(database)) == sorted((event, "a") for event in first + later)
    assert sample(metrics, "fc_stream_duplicate_jobs_suppressed_total") == 0


def test_the_driver_events_forget_the_streams_that_were_closed(wire: WireMongo) -> None:
    events = DriverEvents(resumed=lambda: None, elected=lambda: None)
    with wire.client(event_listeners=[events]) as client:
        for _ in range(20):
            with client[wire.engine.name]["events"].watch(max_await_time_ms=1) as stream:
                stream.try_next()
    assert events.streams_followed() == 0
