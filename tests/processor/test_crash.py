"""Crash safety with real processes: ``fc-stream-processor`` on the embedded store
is killed with SIGKILL in the middle of a large backlog, then restarted."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

from tests.processor.harness import Publisher, spawn_processor, wait_until

PATTERNS = ["orders:*:*:*", "orders:fulfillment:*:*", "*:*:*:shipped", "billing:invoice:*:*", "*:*:*:*"]
TYPES = [
    "orders:fulfillment:shipment:shipped",
    "orders:fulfillment:shipment:packed",
    "billing:invoice:line:added",
    "billing:payment:card:shipped",
    "inventory:stock:item:counted",
]
CLIENTS = ["acme", "globex", "initech", "umbrella"]
EVENTS = 20_000


def naive_matches(pattern: str, event_type: str) -> bool:
    return all(p in ("*", s) for p, s in zip(pattern.split(":"), event_type.split(":"), strict=True))


def test_sigkill_mid_batch_then_restart_leaves_every_due_job_exactly_once(tmp_path: Path) -> None:
    db, log = tmp_path / "store.db", tmp_path / "processor.log"
    publisher = Publisher(db)
    subscriptions = {}
    for client in CLIENTS:
        for n, pattern in enumerate(PATTERNS):
            subscriptions[publisher.subscribe(f"{client}-{n}", pattern, client_id=client)] = (client, pattern)

    with spawn_processor(db, log, FC_STREAM_BATCH_SIZE="1000") as first:
        wait_until(lambda: publisher.token() is not None, message=f"the processor to start; log: {log}")
        rows = [(f"event-{i}", TYPES[i % len(TYPES)], CLIENTS[i % 7 % len(CLIENTS)]) for i in range(EVENTS)]
        with publisher.sql:
            publisher.sql.execute("BEGIN")
            publisher.sql.executemany(
                "INSERT INTO events (id, type, client_id, data) VALUES (?, ?, ?, '{}')", rows
            )
        wait_until(lambda: publisher.job_count() > 0, message="the first batch")
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert not publisher.caught_up(), "the processor was killed before it finished the backlog"

    with spawn_processor(db, log, FC_STREAM_BATCH_SIZE="1000") as second:
        wait_until(publisher.caught_up, timeout=120, message="the backlog after the restart")
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=10) == 0, log.read_text()

    expected = {
        (event, subscription)
        for event, event_type, client in rows
        for subscription, (owner, pattern) in subscriptions.items()
        if owner == client and naive_matches(pattern, event_type)
    }
    assert publisher.jobs() == expected
    assert publisher.job_count() == len(expected)

    # What the killed run committed but had not counted yet, the restart counted: once.
    sql = publisher.sql
    assert dict(sql.execute("SELECT type, count FROM event_type_counts").fetchall()) == dict(
        Counter(event_type for _, event_type, _ in rows)
    )
    per_subscription = Counter(subscription for _, subscription in expected)
    assert dict(sql.execute("SELECT subscription_id, jobs_created FROM subscription_stats")) == dict(
        per_subscription
    )
    per_client = {
        client: (sum(1 for r in rows if r[2] == client), sum(1 for e, s in expected if s.startswith(client)))
        for client in CLIENTS
    }
    assert {
        r[0]: (r[1], r[2]) for r in sql.execute("SELECT client_id, events, jobs FROM client_activity")
    } == (per_client)
