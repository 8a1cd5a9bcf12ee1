"""Hostile events and filters against ``fc-stream-processor`` on the embedded
store, in real processes: nothing one event or one subscription does may stall,
starve or silently drop the work of the others."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from processor.models import MAX_DEAD_LETTER_RAW
from processor.stores.sqlite import FEED_COLUMNS
from tests.processor.harness import Publisher, answers, free_port, spawn_processor, wait_until

SHIPPED = "orders:fulfillment:shipment:shipped"
HANG = "test:hang:forever:now"
MiB = 1024 * 1024


def scrape(port: int, name: str, **labels: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def filter_failures(publisher: Publisher) -> list[tuple[str, str, str]]:
    return [
        (row["event_id"], row["subscription_id"], row["reason"])
        for row in publisher.sql.execute("SELECT * FROM filter_failures ORDER BY seq")
    ]


def test_a_regex_that_backtracks_exponentially_elsewhere_holds_no_one_here(tmp_path: Path) -> None:
    db, log = tmp_path / "store.db", tmp_path / "processor.log"
    publisher = Publisher(db)
    # (a|a)+ against 34 a's and a mismatch: hours for a backtracking engine.
    publisher.subscribe(
        "redos", "*:*:*:*", client_id="victim", filters={"payload": ["$[?search(@, '(a|a)+$')]"]}
    )
    publisher.subscribe("bystander", "*:*:*:*", client_id="bystander")
    with spawn_processor(db, log):
        wait_until(lambda: publisher.token() is not None, message=f"the processor to start; log: {log}")
        poison = publisher.publish(SHIPPED, client_id="victim", data=["a" * 34 + "!"])
        hit = publisher.publish(SHIPPED, client_id="victim", data=["xaa$"])  # $ is a plain character
        other = publisher.publish(SHIPPED, client_id="bystander")
        wait_until(publisher.caught_up, timeout=30, message=f"the events behind the poison one; log: {log}")
    assert publisher.jobs() == {(hit, "redos"), (other, "bystander")}
    assert poison not in {event for event, _ in publisher.jobs()}
    assert filter_failures(publisher) == [] and publisher.dead_letters() == {}


def nested(depth: int) -> Any:
    data: Any = {"x": 1}
    for _ in range(depth):
        data = {"a": data}
    return data


def test_a_filter_that_fails_on_an_event_fails_that_pair_alone(tmp_path: Path) -> None:
    db, log, port = tmp_path / "store.db", tmp_path / "processor.log", free_port()
    publisher = Publisher(db)
    publisher.subscribe("deep", "*:*:*:*", filters={"payload": ["$..x"]})
    publisher.subscribe("all", "*:*:*:*")
    with spawn_processor(db, log, FC_METRICS_PORT=str(port)):
        wait_until(lambda: publisher.token() is not None, message=f"the processor to start; log: {log}")
        deep = publisher.publish(SHIPPED, data=nested(150))  # deeper than the JSONPath descent goes
        shallow = publisher.publish(SHIPPED, data=nested(3))
        wait_until(publisher.caught_up, message=f"the events; log: {log}")
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/live"), message=f"the ops server; log: {log}")
        failed = scrape(port, "fc_stream_filter_failures_total", kind="JSONPathRecursionError")
    assert publisher.jobs() == {(deep, "all"), (shallow, "all"), (shallow, "deep")}
    assert publisher.dead_letters() == {}, "the event itself is valid"
    ((event, subscription, reason),) = filter_failures(publisher)
    assert (event, subscription) == (deep, "deep") and "recursion" in reason
    assert failed == 1
    assert log.read_text().count("the filter of subscription 'deep' failed") == 1


HANG_HOOK = f"""
# Test only: the processing thread hangs on events of type {HANG!r}.
import threading
import processor.matching

_match = processor.matching.SubscriptionMatcher.match

def match(self, event):
    if event.type == {HANG!r}:
        threading.Event().wait()
    return _match(self, event)

processor.matching.SubscriptionMatcher.match = match
"""


def test_a_hung_batch_fails_live_sigterm_ends_the_process_and_a_restart_loses_nothing(tmp_path: Path) -> None:
    db, log, port = tmp_path / "store.db", tmp_path / "processor.log", free_port()
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(HANG_HOOK))
    publisher = Publisher(db)
    publisher.subscribe("all", "*:*:*:*")
    base = f"http://127.0.0.1:{port}"
    settings = {
        "FC_METRICS_PORT": str(port),
        "FC_HEALTH_STALL_SECONDS": "1",
        "FC_SHUTDOWN_GRACE_SECONDS": "1",
    }
    with spawn_processor(db, log, PYTHONPATH=str(hook), **settings) as child:
        wait_until(lambda: publisher.token() is not None, message=f"the processor to start; log: {log}")
        before = publisher.publish(SHIPPED)
        wait_until(lambda: publisher.job_count() == 1, message="the first event's job")
        hung = publisher.publish(HANG)
        position = str(publisher.max_seq())
        after = publisher.publish(SHIPPED)

        def live_fails() -> bool:
            response = httpx.get(f"{base}/live", timeout=5)
            return response.status_code == 503

        wait_until(lambda: answers(f"{base}/live"), message=f"the ops server; log: {log}")
        wait_until(live_fails, timeout=30, message=f"/live to say the processing is stuck; log: {log}")
        assert f"at event {position}" in httpx.get(f"{base}/live", timeout=5).json()["reason"]
        health = httpx.get(f"{base}/health", timeout=5)
        assert health.status_code == 503 and any("stalled" in reason for reason in health.json()["reasons"])
        wait_until(lambda: "stalled" in log.read_text(), message="the watchdog's log line")
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == 1, log.read_text()
    assert "did not finish within" in log.read_text()
    assert publisher.token() == str(int(position) - 1), "the token stayed before the batch in hand"

    with spawn_processor(db, log) as restarted:
        wait_until(publisher.caught_up, message=f"the restart to process the rest; log: {log}")
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(timeout=30) == 0, log.read_text()
    assert publisher.jobs() == {(before, "all"), (hung, "all"), (after, "all")}
    assert publisher.job_count() == 3


CRASH_HOOK = """
# Test only: a bug in processing.
import processor.loop

def process(self, batch):
    raise RuntimeError("a bug in processing")

processor.loop.Processor.process = process
"""


def test_a_bug_that_ends_processing_ends_the_process_with_an_error(tmp_path: Path) -> None:
    db, log = tmp_path / "store.db", tmp_path / "processor.log"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CRASH_HOOK)
    publisher = Publisher(db)
    with spawn_processor(db, log, PYTHONPATH=str(hook)) as child:
        wait_until(lambda: publisher.token() is not None, message=f"the processor to start; log: {log}")
        publisher.publish(SHIPPED)
        assert child.wait(timeout=60) == 1, log.read_text()
    assert "processing stopped on an unexpected error" in log.read_text()
    assert "a bug in processing" in log.read_text()


def big_payload(size: int) -> str:
    """About ``size`` bytes of JSON that is both wide (many small objects) and long (one string)."""
    items = [{"sku": f"sku-{n}", "qty": n % 7, "note": "x" * 40} for n in range(size // 200)]
    text = json.dumps({"items": items, "blob": ""})
    return text[:-2] + "y" * (size - len(text)) + '"}'


def raw_text(sql: sqlite3.Connection, seq: int) -> str:
    """The raw document a dead letter describes: the row as JSON, as the feed writes it."""
    row = sql.execute(f"SELECT {', '.join(FEED_COLUMNS)} FROM events WHERE seq = ?", (seq,)).fetchone()
    return json.dumps(dict(zip(FEED_COLUMNS, tuple(row), strict=True)), ensure_ascii=False, default=repr)


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def test_events_of_ten_megabytes_are_processed_in_bounded_memory_and_dead_letters_stay_small(
    tmp_path: Path,
) -> None:
    db, log = tmp_path / "store.db", tmp_path / "processor.log"
    publisher = Publisher(db)
    publisher.subscribe("all", "*:*:*:*")
    payload = big_payload(10 * 1000 * 1000)
    with spawn_processor(db, log) as child:
        wait_until(lambda: publisher.token() is not None, message=f"the processor to start; log: {log}")
        valid, invalid = [], []
        for n in range(100):
            if n % 2:
                invalid.append(publisher.publish(SHIPPED, data=payload[:-1]))  # cut short: not JSON
            else:
                valid.append(publisher.publish(SHIPPED, data=payload))
        oversized = publisher.publish(SHIPPED, data=json.dumps(["z" * (17 * MiB)]))
        after = publisher.publish(SHIPPED)
        wait_until(publisher.caught_up, timeout=300, message=f"the large events; log: {log}")
        peak = peak_rss_mib(child.pid)
    assert publisher.jobs() == {(event, "all") for event in [*valid, after]}
    letters = {row["event_id"]: row for row in publisher.sql.execute("SELECT * FROM dead_letters")}
    assert set(letters) == {*invalid, oversized}
    for event in [*invalid, oversized]:
        letter = letters[event]
        full = raw_text(publisher.sql, int(letter["position"])).encode()
        assert len(letter["raw"].encode()) <= MAX_DEAD_LETTER_RAW
        assert full.startswith(letter["raw"].encode()), "the raw document's first bytes are kept"
        assert (letter["raw_bytes"], letter["raw_sha256"]) == (len(full), hashlib.sha256(full).hexdigest())
    assert letters[invalid[0]]["reason"].startswith("data: not valid JSON")
    assert (
        letters[oversized]["reason"].startswith("document: is ")
        and "over the limit of 16777216" in (letters[oversized]["reason"])
    )
    assert peak < 400, f"peak resident memory {peak:.0f} MiB"
