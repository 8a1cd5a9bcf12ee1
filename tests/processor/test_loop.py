"""The processor loop on the real embedded store, where the embedded store is
what is tested: its decoding of rows, its schema's history, its projections'
folding, a busy database; and the loop's retries and logs. What every store
must do is the contract suite's (tests/stores/test_contract.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sqlite3
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from processor.config import Thresholds
from processor.health import Health
from processor.loop import Processor, Settings
from processor.models import (
    MAX_DEAD_LETTER_RAW,
    DeadLetter,
    Event,
    Subscription,
    parse_event,
)
from processor.projections import Tally
from processor.retry import UNEXPECTED_ATTEMPTS
from processor.stores.base import (
    ChangeFeed,
    CommitReport,
    FeedEntry,
    Fenced,
    ProcessedBatch,
    StoreUnavailable,
)
from processor.stores.sqlite import SqliteStore, connect, timestamp, transaction
from tests.processor.harness import FAST, Publisher, Running, wait_until

SHIPPED = "orders:fulfillment:shipment:shipped"


def test_invalid_subscriptions_in_the_store_are_skipped_and_the_rest_work(
    store: SqliteStore, publisher: Publisher, caplog: pytest.LogCaptureFixture
) -> None:
    publisher.subscribe("good", "orders:*:*:*")
    publisher.subscribe("bad-pattern", "orders:ship*:*:*")
    publisher.subscribe("bad-filter", "orders:*:*:*", filters={"payload": ["$.items[?@.qty >"]})
    publisher.subscribe("bad-target", "orders:*:*:*", target="ftp://nowhere")
    publisher.sql.execute("UPDATE subscriptions SET filters = '{not json' WHERE id = 'bad-target'")
    with caplog.at_level(logging.ERROR, logger="processor.matching"), Running(store, publisher):
        event = publisher.publish(SHIPPED)
        wait_until(publisher.caught_up)
    assert publisher.jobs() == {(event, "good")}
    logged = caplog.text
    assert "'bad-pattern' skipped" in logged and "event_type_pattern" in logged and "ship*" in logged
    assert "'bad-filter' skipped" in logged and "filters.payload.0" in logged
    assert "'bad-target' skipped" in logged and "filters" in logged


def test_changes_to_subscriptions_read_together_each_apply_from_their_own_point(
    db: Path, publisher: Publisher
) -> None:
    """Every write to a subscription is logged with the last event before it, so
    changes read in one batch apply event by event (MongoDB's store cannot: see
    its expected failure in test_mongo_store.py)."""
    publisher.subscribe("sub", "orders:*:*:*")
    store = SqliteStore(db)
    processor, feed = started(store)
    first = publisher.publish(SHIPPED)
    publisher.sql.execute("UPDATE subscriptions SET event_type_pattern = 'billing:*:*:*' WHERE id = 'sub'")
    second = publisher.publish(SHIPPED)
    third = publisher.publish("billing:invoice:line:added")
    publisher.sql.execute("UPDATE subscriptions SET active = 0 WHERE id = 'sub'")
    fourth = publisher.publish("billing:invoice:line:added")
    publisher.sql.execute("UPDATE subscriptions SET active = 1 WHERE id = 'sub'")
    fifth = publisher.publish("billing:invoice:line:added")
    publisher.sql.execute("DELETE FROM subscriptions WHERE id = 'sub'")
    sixth = publisher.publish("billing:invoice:line:added")
    batch = feed.next_batch(10, 0.0)
    assert [entry.event_id for entry in batch.entries] == [first, second, third, fourth, fifth, sixth]
    processor.process(batch)
    store.close()
    assert publisher.jobs() == {(first, "sub"), (third, "sub"), (fifth, "sub")}


def test_invalid_events_are_dead_lettered_and_never_stop_the_batch(
    store: SqliteStore, publisher: Publisher
) -> None:
    publisher.subscribe("all", "*:*:*:*")
    with Running(store, publisher):
        before = publisher.publish(SHIPPED)
        not_utf8 = publisher.sql.execute(
            "INSERT INTO events (type, client_id) VALUES (?, CAST(x'61ff' AS TEXT)) RETURNING id", (SHIPPED,)
        ).fetchone()[0]
        not_json = publisher.publish(SHIPPED, data="{not json")
        bad = {
            not_json: "data: not valid JSON",
            # Stored text the feed cannot read: it fails the whole read, unless the feed marks it.
            not_utf8: "client_id: not valid UTF-8 text",
            publisher.publish(SHIPPED, received_at="yesterday-ish"): "received_at: not a time",
            publisher.publish(SHIPPED, received_at="9999-12-31T23:59:59-01:00"): "received_at: not a time",
            publisher.publish(SHIPPED, data="[" * 100_000 + "]" * 100_000): "data: not valid JSON (nested",
            publisher.publish("orders:shipped"): "type",
            publisher.publish(SHIPPED, client_id=None): "client_id",
            publisher.publish(12, client_id="acme"): "type",
            publisher.publish(SHIPPED, metadata="[1, 2]"): "metadata",
            publisher.publish(SHIPPED, time="yesterday-ish"): "time",
            publisher.publish(SHIPPED, client_id=b"\xff"): "client_id",
            # Edges: each is dead-lettered naming its field, not misfiled or let through.
            publisher.publish(SHIPPED, time="9999-12-31T23:59:59-01:00"): "time: is outside the range of UTC",
            publisher.publish(
                SHIPPED, time=b"2025-03-01T12:00:00Z"
            ): "time: must be a time (RFC 3339 text), not bytes",
            # An INTEGER in a TEXT column is stored as text: refused as a number, not read as Unix time.
            publisher.publish(
                SHIPPED, time=1_740_830_400
            ): "time: must be a time (RFC 3339 text), not a number",
            publisher.publish(
                SHIPPED, data="[" + "7" * 5000 + "]"
            ): "data: valid JSON, but it holds an integer of more",
            # Decoded, this would take 30 times its size: refused before it is.
            publisher.publish(
                SHIPPED, data="[" + ",".join(["[]"] * 1_100_000) + "]"
            ): "data: holds up to 2200000",
        }
        after = publisher.publish(SHIPPED)
        wait_until(publisher.caught_up)
    assert publisher.jobs() == {(before, "all"), (after, "all")}
    letters = publisher.dead_letters()
    assert set(letters) == set(bad)
    for event, field in bad.items():
        assert letters[event].startswith(field), (event, letters[event])
    raw = dict(publisher.sql.execute("SELECT event_id, raw FROM dead_letters").fetchall())
    assert json.loads(raw[not_json])["data"] == "{not json", "the raw document is kept whole"
    assert json.loads(raw[not_utf8])["client_id"] == repr(b"a\xff"), "and keeps the bytes"
    assert not any("matching failed" in reason for reason in letters.values())


class FlakyStore(SqliteStore):
    """Fails the first commits, as a store that is briefly unreachable does."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures
        self.tokens_seen_while_failing: list[str | None] = []
        self.publisher = Publisher(path)

    def commit(self, batch: ProcessedBatch) -> CommitReport:
        if self.failures:
            self.failures -= 1
            self.tokens_seen_while_failing.append(self.publisher.token())
            raise StoreUnavailable("injected failure")
        return super().commit(batch)


def test_a_failing_write_is_retried_and_the_token_waits_for_it(db: Path, publisher: Publisher) -> None:
    publisher.subscribe("all", "*:*:*:*")
    store = FlakyStore(db, failures=0)
    with Running(store, publisher) as processor:
        start = publisher.token()
        store.failures = 4
        events = {publisher.publish(SHIPPED) for _ in range(5)}
        wait_until(publisher.caught_up)
    assert store.tokens_seen_while_failing == [start] * 4, "the token never moved past unwritten work"
    assert publisher.jobs() == {(event, "all") for event in events}
    errors = processor.metrics.store_errors.labels("commit", "StoreUnavailable")._value.get()
    assert errors == 4


class LockedStore(SqliteStore):
    """Another writer holds the database from the first commit of jobs on,
    until the test releases it: no timer to race with the test's assertions."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.locker = connect(path)
        self.locked = threading.Event()

    def commit(self, batch: ProcessedBatch) -> CommitReport:
        if batch.jobs and not self.locked.is_set():
            self.locker.execute("BEGIN EXCLUSIVE")
            self.locked.set()
        return super().commit(batch)

    def release(self) -> None:
        self.locker.execute("COMMIT")


def test_a_locked_store_is_waited_out_with_backoff(db: Path, publisher: Publisher) -> None:
    publisher.subscribe("all", "*:*:*:*")
    store = LockedStore(db)
    with Running(store, publisher) as processor:
        start = publisher.token()
        # In one write: the lock the store's first commit takes cannot fall between two of them.
        with transaction(publisher.sql):
            events = {publisher.publish(SHIPPED) for _ in range(20)}
        wait_until(
            lambda: processor.metrics.store_errors.labels("commit", "StoreUnavailable")._value.get() >= 2,
            message="retries",
        )
        assert publisher.token() == start, "nothing moved while the store was locked"
        assert not processor.health.report()["change_stream"]["connected"]
        store.release()
        wait_until(publisher.caught_up)
    assert publisher.jobs() == {(event, "all") for event in events}
    assert processor.health.report()["change_stream"]["connected"]


class FaultyStore(SqliteStore):
    """A store with a defect: its commit raises ``TypeError`` the first ``faults`` times."""

    def __init__(self, path: Path, faults: int) -> None:
        super().__init__(path, from_beginning=True)
        self.faults = faults

    def commit(self, batch: ProcessedBatch) -> CommitReport:
        if batch.jobs and self.faults > 0:
            self.faults -= 1
            raise TypeError("a defect in the store")
        return super().commit(batch)


def test_an_unexpected_error_is_retried_a_few_times_then_raised_not_retried_for_ever(
    db: Path, publisher: Publisher, caplog: pytest.LogCaptureFixture
) -> None:
    publisher.subscribe("all", "*:*:*:*")
    publisher.publish(SHIPPED)
    processor = Processor(FaultyStore(db, faults=1_000), FAST)
    with pytest.raises(TypeError, match="a defect in the store"):
        processor.run()  # in this thread: it returns, or raises
    failures = processor.metrics.store_errors.labels("commit", "TypeError")._value.get()
    assert failures == UNEXPECTED_ATTEMPTS - 1, "the last attempt is raised, not retried"
    assert "commit failed unexpectedly (attempt 1 of 5)" in caplog.text
    assert "Traceback" in caplog.text and "TypeError: a defect in the store" in caplog.text
    assert publisher.job_count() == 0


def test_an_unexpected_error_that_passes_is_retried_like_any_failure(db: Path, publisher: Publisher) -> None:
    publisher.subscribe("all", "*:*:*:*")
    event = publisher.publish(SHIPPED)
    with Running(FaultyStore(db, faults=UNEXPECTED_ATTEMPTS - 1), publisher):
        wait_until(publisher.caught_up, message="the commit to succeed at its last attempt")
    assert publisher.jobs() == {(event, "all")}


def counted(publisher: Publisher) -> tuple[int, int, int]:
    """From the projections: events of type SHIPPED, jobs of subscription "all", jobs of client acme."""
    sql = publisher.sql
    types = dict(sql.execute("SELECT type, count FROM event_type_counts").fetchall())
    subscriptions = dict(sql.execute("SELECT subscription_id, jobs_created FROM subscription_stats"))
    clients = dict(sql.execute("SELECT client_id, jobs FROM client_activity").fetchall())
    return types.get(SHIPPED, 0), subscriptions.get("all", 0), clients.get("acme", 0)


def subscribed_to_all(publisher: Publisher, events: int) -> None:
    """A subscription "all" to every event, then ``events`` events of type SHIPPED."""
    publisher.subscribe("all", "*:*:*:*")
    for _ in range(events):
        publisher.publish(SHIPPED)


def started(store: SqliteStore, size: int = 10) -> tuple[Processor, ChangeFeed]:
    """A processor and its feed, as the loop starts them: the feed opened, then
    what the last run left uncounted counted."""
    processor = Processor(store, Settings(batch_size=size, max_wait=0.0))
    feed = store.open_feed(store.resume_token())
    processor.projector.recount()
    return processor, feed


def process_batches(store: SqliteStore, count: int, size: int = 10) -> Processor:
    """``count`` batches of ``size``, as the loop would read and process them."""
    processor, feed = started(store, size)
    for _ in range(count):
        processor.process(feed.next_batch(size, 0.0))
    return processor


def test_projections_are_written_every_few_batches_and_a_crash_loses_none(
    db: Path, publisher: Publisher
) -> None:
    publisher.subscribe("all", "*:*:*:*")
    publisher.subscribe("shipped", "*:*:*:shipped")
    events = [publisher.publish(SHIPPED) for _ in range(23)]
    unmatchable = publisher.publish(SHIPPED)  # valid, but matching it fails: dead-lettered
    publisher.publish("orders:shipped")  # invalid: dead-lettered
    events += [publisher.publish(SHIPPED) for _ in range(5)]

    first = SqliteStore(db, from_beginning=True, fold_events=20)
    processor, feed = started(first)
    processor.process(feed.next_batch(10, 0.0))
    assert counted(publisher) == (0, 0, 0), "a full batch: more are waiting, the count waits too"
    processor.process(feed.next_batch(10, 0.0))
    assert counted(publisher) == (20, 20, 40), "20 events waited: counted"
    match = processor.matcher.match

    def failing_match(event: Event) -> tuple[list[Subscription], list[tuple[Subscription, Exception]]]:
        if event.id == unmatchable:
            raise RuntimeError("a bug")
        return match(event)

    processor.matcher.match = failing_match  # type: ignore[method-assign]
    processor.process(feed.next_batch(10, 0.0))
    assert publisher.caught_up() and counted(publisher) == (20, 20, 40)
    letters = publisher.dead_letters()
    assert len(letters) == 2 and letters[unmatchable].startswith("matching failed")
    first.close()  # as a crash would: the batch is committed, its count was only in memory
    # An operator moves the token past events nobody processed: they are not counted.
    skipped = [publisher.publish(SHIPPED) for _ in range(3)]
    publisher.sql.execute("UPDATE resume_tokens SET token = ?", (str(publisher.max_seq()),))

    second = SqliteStore(db, fold_events=20)
    processor, feed = started(second)
    assert counted(publisher) == (28, 28, 56), "the start counted what the first run left, and only that"
    events += [publisher.publish(SHIPPED) for _ in range(10)]
    processor.process(feed.next_batch(10, 0.0))
    second.close()  # a crash again, the skipped events now between its batch and the last count

    third = SqliteStore(db, fold_events=20)
    processor, feed = started(third)
    assert counted(publisher) == (38, 38, 76), "the start counted the second run's batch, not the skipped"
    events += [publisher.publish(SHIPPED) for _ in range(10)]
    processor.process(feed.next_batch(10, 0.0))
    assert counted(publisher) == (38, 38, 76), "a full batch: its count waits"
    assert feed.next_batch(10, 0.0).entries == []
    processor.projector.flush()  # what the loop does when a read finds nothing new
    assert counted(publisher) == (48, 48, 96), "nothing new to read: what waited is counted"
    third.close()
    assert {event for event, _ in publisher.jobs()} == set(events) and len(publisher.jobs()) == 96
    assert not set(skipped) & {event for event, _ in publisher.jobs()}


def test_a_stop_counts_what_waits_so_the_projections_are_current_once_the_process_has_gone(
    db: Path, publisher: Publisher
) -> None:
    subscribed_to_all(publisher, 30)
    store = SqliteStore(db, from_beginning=True, fold_events=1000)
    processor = Processor(store, Settings(batch_size=10, max_wait=0.0))
    commit = store.commit

    def commit_then_stop(batch: ProcessedBatch) -> CommitReport:
        report = commit(batch)
        processor.stop()  # SIGTERM during the first batch: it is committed, its count waits
        return report

    store.commit = commit_then_stop  # type: ignore[method-assign]
    processor.run()
    store.close()
    assert publisher.token() == "10", "the first batch only"
    assert counted(publisher) == (10, 10, 10)


def test_jobs_are_counted_after_the_router_deleted_delivered_ones(db: Path, publisher: Publisher) -> None:
    """Deleted rows let SQLite give their seq out again (INTEGER PRIMARY KEY):
    what the projections count is what each commit created, not rows after a seq."""
    subscribed_to_all(publisher, 3)
    store = SqliteStore(db, from_beginning=True)
    processor, feed = started(store)
    processor.process(feed.next_batch(10, 0.0))
    assert counted(publisher) == (3, 3, 3)
    publisher.sql.execute("DELETE FROM dispatch_jobs")  # delivered, and purged
    for _ in range(2):
        publisher.publish(SHIPPED)
    processor.process(feed.next_batch(10, 0.0))
    assert publisher.job_count() == 2
    assert counted(publisher) == (5, 5, 5), "the two new jobs are counted"
    store.close()


class FailingOnce(SqliteStore):
    """Its first write of counts to the projections fails once done: the
    transaction rolls back."""

    failed = False

    def _count(self, tally: Tally, existing: set[str] | frozenset[str] = frozenset()) -> None:
        super()._count(tally, existing)
        if tally.events and not self.failed:
            self.failed = True
            raise StoreUnavailable("injected failure")


def test_a_commit_that_fails_after_counting_counts_nothing_and_its_retry_counts_once(
    db: Path, publisher: Publisher
) -> None:
    subscribed_to_all(publisher, 35)
    store = FailingOnce(db, from_beginning=True, fold_events=20)
    process_batches(store, 4)
    assert store.failed, "the failure was injected"
    assert counted(publisher) == (35, 35, 35)
    store.close()


def test_a_deposed_leader_does_not_count_what_it_left(db: Path, publisher: Publisher) -> None:
    subscribed_to_all(publisher, 10)
    old = SqliteStore(db, from_beginning=True, exclusive=False)  # leaders, as under standby
    old.fence(1, "old")
    deposed = process_batches(old, 1)  # a full batch: its count waits
    new = SqliteStore(db, exclusive=False)
    new.fence(2, "new")
    started(new)
    assert counted(publisher) == (10, 10, 10), "the new leader counted what the old one left"
    with pytest.raises(Fenced):
        deposed.projector.flush()  # as the old leader's next read, finding nothing, would
    assert counted(publisher) == (10, 10, 10)
    old.close()
    new.close()


# Payloads at the edges of JSON: whatever the feed does to decode them, events
# carry what Python's own JSON decoder makes of the stored text.
PAYLOADS = [
    '{"a": null, "b": [null, 1], "c": {"d": {"e": [1, {"f": null}]}}}',
    '{"n": 123456789012345678901234567890, "m": -9007199254740993}',
    '{"f": 1.0, "g": 1e300, "h": -0.0, "i": 0.1, "j": 2.5e-7}',
    r'{"s": "é😀 \"q\" \\ \u00e9 \ud83d\ude00"}',
    r'"\ud800"',
    '{"x": NaN, "y": Infinity}',
    "[]",
    "{}",
    '  {"w": 1}  ',
    "null",
    "7",
    '"text"',
    '{"dup": 1, "dup": 2}',
    "[1e400, -1e400, 5e-324, 1.7976931348623157e308, 2.2250738585072014e-308, 0.30000000000000004]",
    "[123456789.123456789e-5, 1E5, -0, 18446744073709551615, 18446744073709551616, -9223372036854775809]",
    "[" * 300 + "]" * 300,  # deeper than pydantic-core's parser goes
]


def test_the_feed_decodes_payloads_as_python_json_does(store: SqliteStore, publisher: Publisher) -> None:
    feed = store.open_feed(store.resume_token())
    for data in PAYLOADS:
        publisher.sql.execute(
            "INSERT INTO events (type, client_id, data) VALUES (?, ?, ?)", (SHIPPED, "acme", data)
        )
    entries = feed.next_batch(100, 1.0).entries
    assert len(entries) == len(PAYLOADS)
    for data, entry in zip(PAYLOADS, entries, strict=True):
        assert entry.document is not None, data
        event = parse_event(entry.document, entry.received_at)
        assert repr(event.data) == repr(json.loads(data)), data  # repr: NaN, -0.0 and types count
        assert event.time == entry.received_at, "time defaults to when the store received the event"


def test_a_first_start_saves_its_starting_point_before_any_batch(db: Path, publisher: Publisher) -> None:
    publisher.publish(SHIPPED)  # before the first start
    store = SqliteStore(db)
    store.open_feed(store.resume_token())
    assert publisher.token() == "1", "the current point, saved as the feed opens: a crash keeps it"
    store.close()


def test_an_idle_feed_waits_without_spinning(store: SqliteStore, publisher: Publisher) -> None:
    feed = store.open_feed(store.resume_token())
    reads = 0
    real_read = feed._read

    def counting_read(max_events: int, max_bytes: int) -> tuple[list[FeedEntry], bool]:
        nonlocal reads
        reads += 1
        return real_read(max_events, max_bytes)

    feed._read = counting_read  # type: ignore[method-assign]
    batch = feed.next_batch(10, 0.5)
    assert batch.entries == []
    assert reads <= 3, f"an idle half second took {reads} queries"


def test_stored_times_have_one_width_and_sort_as_text() -> None:
    moments = [
        datetime(5, 1, 1, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2025, 3, 1, 12, tzinfo=timezone(timedelta(hours=2))),
        datetime(2025, 3, 1, 10, 0, 0, 1, tzinfo=UTC),
    ]
    texts = [timestamp(moment) for moment in moments]
    assert texts[2] == "2025-03-01T10:00:00.000000Z"
    assert {len(text) for text in texts} == {len("2025-03-01T10:00:00.000000Z")}
    assert sorted(texts) == [timestamp(moment) for moment in sorted(moments)]


def test_lag_returns_to_zero_once_caught_up_even_when_the_last_batch_was_full(
    db: Path, publisher: Publisher
) -> None:
    subscribed_to_all(publisher, 20)  # exactly two full batches
    store = SqliteStore(db, from_beginning=True)
    health = Health(Thresholds(max_lag=5))
    # An hour from now: each full batch reports its newest event an hour behind.
    processor = Processor(
        store, Settings(batch_size=10, max_wait=0.05), health=health, clock=lambda: datetime.now(UTC) + HOUR
    )
    thread = threading.Thread(target=processor.run, daemon=True)
    thread.start()
    try:
        wait_until(publisher.caught_up, message="the backlog")
        wait_until(lambda: health.report()["status"] == "UP", message="/health UP once caught up")
        assert processor.metrics.lag._value.get() == 0.0
        assert health.report()["lag_seconds"] == 0.0
    finally:
        processor.stop()
        thread.join(timeout=10)
        store.close()
    assert processor.metrics.processing_duration._sum.get() > 0, "the two full batches were processed"


HOUR = timedelta(hours=1)


def test_a_failing_filter_is_counted_each_time_and_logged_once_a_minute(
    db: Path, publisher: Publisher, caplog: pytest.LogCaptureFixture
) -> None:
    publisher.subscribe("deep", "*:*:*:*", filters={"payload": ["$..x"]})
    publisher.subscribe("all", "*:*:*:*")
    deep: dict[str, object] = {"x": 1}
    for _ in range(150):
        deep = {"a": deep}
    events = [publisher.publish(SHIPPED, data=deep) for _ in range(4)]
    store = SqliteStore(db, from_beginning=True)
    now = [datetime(2025, 3, 1, 12, 0, tzinfo=UTC)]
    processor = Processor(store, Settings(batch_size=1, max_wait=0.0), clock=lambda: now[0])
    feed = store.open_feed(store.resume_token())
    with caplog.at_level(logging.ERROR, logger="processor.loop"):
        start = now[0]
        for seconds in (0, 30, 59, 61):  # one event per batch, at these times
            now[0] = start + timedelta(seconds=seconds)
            processor.process(feed.next_batch(1, 0.0))
    store.close()
    logged = [r.getMessage() for r in caplog.records if "the filter of subscription 'deep'" in r.getMessage()]
    assert len(logged) == 2, logged
    assert "2 more failures of it since the last one logged" in logged[1]
    kind = processor.metrics.filter_failures.labels("JSONPathRecursionError")._value.get()
    assert kind == 4
    failures = publisher.sql.execute("SELECT event_id, subscription_id FROM filter_failures ORDER BY seq")
    assert [tuple(row) for row in failures] == [(event, "deep") for event in events]
    assert publisher.jobs() == {(event, "all") for event in events}


def test_a_store_file_from_before_the_dead_letters_size_columns_gains_them_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE dead_letters (seq INTEGER PRIMARY KEY, position TEXT NOT NULL UNIQUE, event_id TEXT, "
        "reason TEXT NOT NULL, raw TEXT NOT NULL, received_at TEXT NOT NULL, created_at TEXT NOT NULL "
        "DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"
    )
    old.execute(
        "INSERT INTO dead_letters (position, reason, raw, received_at) VALUES ('1', 'old', '{}', 'x')"
    )
    old.commit()
    old.close()
    store = SqliteStore(path)
    letter = DeadLetter.of("2", "e2", "new", ["{}"], datetime.now(UTC))
    store.commit(ProcessedBatch([], [letter], None))
    store.close()
    rows = connect(path).execute("SELECT position, raw_bytes, raw_sha256 FROM dead_letters ORDER BY seq")
    assert [tuple(row) for row in rows] == [("1", None, None), ("2", 2, hashlib.sha256(b"{}").hexdigest())]


def test_a_dead_letter_keeps_the_first_bytes_of_its_raw_document_and_describes_all_of_it() -> None:
    pieces = ["é" * 40_000, "x" * 10, "ü" * 30_000]  # two bytes a character, cut inside one
    whole = "".join(pieces).encode()
    letter = DeadLetter.of("7", None, "why", iter(pieces), datetime.now(UTC))
    kept = letter.raw.encode()
    assert len(kept) <= MAX_DEAD_LETTER_RAW and len(kept) >= MAX_DEAD_LETTER_RAW - 1
    assert whole.startswith(kept), "cut at a character, never inside one"
    assert (letter.raw_bytes, letter.raw_sha256) == (len(whole), hashlib.sha256(whole).hexdigest())
    short = DeadLetter.of("8", None, "why", ["{}"], datetime.now(UTC))
    assert short.raw == "{}"


def test_an_event_over_the_cap_comes_alone_unread_and_its_dead_letter_describes_it_as_the_row(
    tmp_path: Path,
) -> None:
    """The same invalid row dead-lettered read whole and streamed (over a small cap) gives one hash."""
    whole, capped = tmp_path / "whole.db", tmp_path / "capped.db"
    publisher = Publisher(whole)
    blob = b'it\'s "quoted" \xff' * 20_000  # a BLOB payload: invalid, and over the small cap
    event = publisher.sql.execute(
        "INSERT INTO events (type, client_id, data) VALUES ('orders:bad', 'acme', ?) RETURNING id", (blob,)
    ).fetchone()[0]
    publisher.sql.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copyfile(whole, capped)
    letters = {}
    for path, cap in ((whole, 16 * 1024 * 1024), (capped, 100_000)):
        store = SqliteStore(path, from_beginning=True, max_event_bytes=cap)
        feed = store.open_feed(store.resume_token())
        batch = feed.next_batch(10, 0.0)
        assert [entry.event_id for entry in batch.entries] == [event] and not batch.more
        Processor(store, Settings(batch_size=10, max_wait=0.0)).process(batch)
        letters[cap] = connect(path).execute("SELECT * FROM dead_letters").fetchone()
        store.close()
    read, streamed = letters[16 * 1024 * 1024], letters[100_000]
    assert read["reason"].startswith("data: must be JSON text, got bytes")
    assert streamed["reason"].startswith("document: is ") and "over the limit of 100000" in streamed["reason"]
    assert (streamed["raw_bytes"], streamed["raw_sha256"]) == (read["raw_bytes"], read["raw_sha256"])
    assert streamed["raw"] == read["raw"] and len(read["raw"].encode()) <= MAX_DEAD_LETTER_RAW


def test_an_event_over_the_cap_says_whether_more_wait_and_one_deleted_meanwhile_is_still_dead_lettered(
    db: Path, publisher: Publisher
) -> None:
    publisher.subscribe("all", "*:*:*:*")
    big = publisher.publish(SHIPPED, data=json.dumps(["x" * 5_000]))
    after = publisher.publish(SHIPPED)
    store = SqliteStore(db, from_beginning=True, max_event_bytes=1_000)
    feed = store.open_feed(store.resume_token())
    first = feed.next_batch(10, 0.0)
    assert [entry.event_id for entry in first.entries] == [big] and first.more, "alone, with more behind"
    publisher.sql.execute("DELETE FROM events WHERE id = ?", (big,))  # before its dead letter is written
    processor = Processor(store, Settings(batch_size=10, max_wait=0.0))
    processor.process(first)
    second = feed.next_batch(10, 0.0)
    assert [entry.event_id for entry in second.entries] == [after] and not second.more
    processor.process(second)
    store.close()
    assert publisher.jobs() == {(after, "all")}
    (reason, raw) = publisher.sql.execute("SELECT reason, raw FROM dead_letters").fetchone()
    assert "over the limit of 1000" in reason and "could not be read again" in raw
