"""The store contract (``processor.stores.base``), run against every store: what
a correct store does, told by the real processor driving it.

Each test runs once per store of the ``backend`` fixture (tests/stores/conftest.py)
and knows the store only through its driver (tests/stores/backends.py) and the
contract's roles. The processor is driven as its loop drives it, a batch at a
time, in the test's own thread (``Run``): open the feed, count what the last
run left, then read and process. Where the test waits for the store, it reads
until a condition holds, within a generous deadline: never on a timer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any

import pytest

from processor.jobs import create_jobs, job_id
from processor.loop import Processor, Settings
from processor.models import PENDING, DispatchJob, Subscription
from processor.projections import Tally, event_key
from processor.remedies import Limits, backfill, redrive_dead_letters, retry_filter_failures
from processor.stores.base import (
    BATCH_BYTES,
    Batch,
    CommitReport,
    FeedEntry,
    Fenced,
    ProcessedBatch,
    ResumeToken,
    Store,
)
from tests.processor.harness import wait_until
from tests.stores.backends import (
    A_JOB_TWICE_IN_ONE_BATCH,
    COUNTED_ONCE_WHEN_REPLAYED,
    FIRST_START_AT_THE_CURRENT_POINT,
    NO_EVENT_TIME_WITHOUT_EVENTS,
    SUBSCRIPTIONS_AS_OF_INSERT_AFTER_A_RESTART,
    TARGET,
    Backend,
    Projections,
    expect_defect,
)

SHIPPED = "orders:fulfillment:shipment:shipped"
PACKED = "orders:fulfillment:shipment:packed"
BILLED = "billing:invoice:line:added"
SOURCE = "orders-service"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)  # whole seconds: MongoDB keeps milliseconds
MAX_WAIT = 0.05  # seconds a read waits for its first event
DEADLINE = 30.0  # seconds a test reads for what it waits for, at most
SETTINGS = Settings(batch_size=50, max_wait=MAX_WAIT, backoff_initial=0.01, backoff_max=0.2)


# -- what other services write, and what the processor wrote ------------------------


def publish(
    backend: Backend, type: str | None = SHIPPED, client_id: str | None = "acme", **fields: Any
) -> str:
    """An event as a publisher inserts it; ``None`` leaves a field out."""
    document = {"type": type, "client_id": client_id, "source": SOURCE, **fields}
    return backend.publish({name: value for name, value in document.items() if value is not None})


def fed(
    store: Store, after: ResumeToken | None, ids: list[str]
) -> tuple[list[FeedEntry], ResumeToken | None]:
    """The events ``ids`` as the feed after ``after`` hands them out, and the
    position after them: a tally counts events of the feed, by their positions."""
    feed = store.open_feed(after)
    events: list[FeedEntry] = []
    token = after

    def read() -> bool:
        nonlocal token
        batch = feed.next_batch(len(ids), MAX_WAIT)
        events.extend(batch.entries)
        token = batch.resume_token
        return len(events) >= len(ids)

    wait_until(read, timeout=DEADLINE, message="the events from the feed")
    feed.close()
    assert [entry.event_id for entry in events] == ids
    return events, token


def jobs(backend: Backend) -> set[tuple[str, str]]:
    """The (event, subscription) pairs of the stored jobs; none is stored twice."""
    pairs = backend.jobs()
    assert len(pairs) == len(set(pairs)), f"a job stored twice: {sorted(pairs)}"
    return set(pairs)


def subscription(id: str, pattern: str = "*:*:*:*") -> Subscription:
    return Subscription.model_validate(
        {
            "id": id,
            "client_id": "acme",
            "name": f"subscription {id}",
            "event_type_pattern": pattern,
            "target": TARGET,
            "pool_code": "default",
        }
    )


def job(event_id: str, subscription_id: str) -> DispatchJob:
    return DispatchJob(
        id=job_id(event_id, subscription_id),
        event_id=event_id,
        subscription_id=subscription_id,
        client_id="acme",
        status=PENDING,
        target=TARGET,
        pool_code="default",
        scheduled_at=NOW,
        attempts=0,
        last_attempt_at=None,
        last_error=None,
        created_at=NOW,
    )


def counted(jobs: list[DispatchJob], token: ResumeToken | None) -> ProcessedBatch:
    """A batch of ``jobs`` alone, committed with its tally, as once caught up."""
    return ProcessedBatch(jobs, [], token, tally=Tally([], jobs, token))


# -- the processor, a batch at a time ------------------------------------------------------


class Run:
    """A processor on ``store``, started as the loop starts one: the feed opened
    after the saved token (or ``from_token``, as after an operator moved it),
    what the last run left uncounted counted, and a first batch read and
    processed: the starting point, and the subscriptions as they stand."""

    def __init__(self, store: Store, *, batch_size: int = 50, from_token: ResumeToken | None = None) -> None:
        self.store = store
        self.processor = Processor(store, replace(SETTINGS, batch_size=batch_size))
        retry = self.processor.retry
        self.token = from_token if from_token is not None else retry("load resume token", store.resume_token)
        self.feed = retry("open feed", store.open_feed, self.token)
        retry("count what the last run left", self.processor.projector.recount)
        self.batches: list[Batch] = []
        self.reports: list[CommitReport] = []
        self.step()

    def read(self, max_events: int | None = None, max_bytes: int = BATCH_BYTES) -> Batch:
        size = max_events or self.processor.settings.batch_size
        batch = self.processor.retry("read", self.feed.next_batch, size, MAX_WAIT, max_bytes)
        self.batches.append(batch)
        return batch

    def process(self, batch: Batch) -> None:
        """As the loop does: a batch with events or a new position is processed
        and committed; a read that found nothing counts what waits."""
        if batch.entries or batch.resume_token != self.token:
            self.reports.append(self.processor.process(batch))
            self.token = batch.resume_token
        else:
            self.processor.projector.flush()

    def step(self, max_events: int | None = None, max_bytes: int = BATCH_BYTES) -> Batch:
        batch = self.read(max_events, max_bytes)
        self.process(batch)
        return batch

    def until(self, condition: Callable[[], bool], message: str, **limits: int) -> None:
        """Step until ``condition`` holds."""

        def stepped() -> bool:
            self.step(**limits)
            return condition()

        wait_until(stepped, timeout=DEADLINE, message=message)

    def through(self, *event_ids: str, **limits: int) -> None:
        """Step until each of ``event_ids`` was read and processed."""
        wanted = set(event_ids)
        self.until(
            lambda: wanted <= set(self.read_ids()), f"the events {sorted(wanted)} to be read", **limits
        )

    def read_until(self, event_id: str) -> Batch:
        """Step until a read holds ``event_id``: that batch, read and not processed."""
        found: list[Batch] = []

        def read() -> bool:
            batch = self.read()
            if event_id in ids(batch):
                found.append(batch)
                return True
            self.process(batch)
            return False

        wait_until(read, timeout=DEADLINE, message=f"the event {event_id} to be read")
        return found[0]

    def read_ids(self) -> list[str | None]:
        """The events read, in the order they were read."""
        return [event_id for batch in self.batches for event_id in ids(batch)]

    @property
    def created(self) -> int:
        return sum(report.jobs_created for report in self.reports)

    @property
    def duplicates(self) -> int:
        return sum(report.duplicates for report in self.reports)

    def close(self) -> None:
        self.feed.close()


def ids(batch: Batch) -> list[str | None]:
    return [entry.event_id for entry in batch.entries]


# -- events to jobs ----------------------------------------------------------------------------


def test_each_event_becomes_one_job_per_matching_subscription(backend: Backend) -> None:
    backend.put_subscription("exact", SHIPPED)
    backend.put_subscription("any-order", "orders:*:*:*")
    backend.put_subscription("any-action", "orders:fulfillment:shipment:*")
    backend.put_subscription("left", "*:*:*:shipped")
    backend.put_subscription("everything", "*:*:*:*")
    backend.put_subscription("other-client", "*:*:*:*", client_id="globex")
    backend.put_subscription("inactive", "*:*:*:*", active=False)
    backend.put_subscription("inventory", "inventory:*:*:*")
    run = Run(backend.open())
    shipped = publish(backend, SHIPPED)
    packed = publish(backend, PACKED)
    billed = publish(backend, "billing:invoice:line:shipped")
    other = publish(backend, SHIPPED, client_id="globex")
    nobody = publish(backend, SHIPPED, client_id="initech")
    run.through(shipped, packed, billed, other, nobody)
    assert jobs(backend) == {
        (shipped, "exact"),
        (shipped, "any-order"),
        (shipped, "any-action"),
        (shipped, "left"),
        (shipped, "everything"),
        (packed, "any-order"),
        (packed, "any-action"),
        (packed, "everything"),
        (billed, "left"),
        (billed, "everything"),
        (other, "other-client"),
    }
    assert (run.created, run.duplicates) == (11, 0)


def test_a_job_carries_the_fields_of_the_spec(backend: Backend) -> None:
    backend.put_subscription("orders", "orders:*:*:*", target="https://hooks.example.com/orders")
    run = Run(backend.open())
    event = publish(backend)
    run.through(event)
    (stored,) = backend.stored_jobs()
    assert stored.id == job_id(event, "orders"), "a job's id is its pair's"
    assert (stored.event_id, stored.subscription_id, stored.client_id) == (event, "orders", "acme")
    assert (stored.status, stored.attempts) == (PENDING, 0)
    assert (stored.last_attempt_at, stored.last_error) == (None, None)
    assert (stored.target, stored.pool_code) == ("https://hooks.example.com/orders", "default")
    assert stored.scheduled_at == stored.created_at


# -- positions: the current point, resuming, replaying --------------------------------------------


def test_a_first_start_begins_at_the_current_point(request: pytest.FixtureRequest, backend: Backend) -> None:
    expect_defect(request, backend, FIRST_START_AT_THE_CURRENT_POINT)
    backend.put_subscription("all")
    publish(backend)  # before the first start: not this processor's to handle
    publish(backend)
    run = Run(backend.open())
    later = publish(backend)
    run.through(later)
    assert run.read_ids() == [later]
    assert jobs(backend) == {(later, "all")}


def test_a_restart_after_an_idle_first_start_goes_on_from_its_starting_point(backend: Backend) -> None:
    backend.put_subscription("all")
    first = Run(backend.open())  # idle: its only batch is empty, its position the current point
    first.close()
    first.store.close()
    while_down = publish(backend)
    second = Run(backend.open())
    second.through(while_down)
    assert jobs(backend) == {(while_down, "all")}


def test_a_restart_resumes_after_the_saved_token(backend: Backend) -> None:
    backend.put_subscription("all")
    first = Run(backend.open())
    before = [publish(backend), publish(backend)]
    first.through(*before)
    first.close()
    first.store.close()
    assert backend.open().resume_token() is not None, "the position was saved"
    while_down = [publish(backend), publish(backend)]
    second = Run(backend.open())
    after = publish(backend)
    second.through(*while_down, after)
    assert jobs(backend) == {(event, "all") for event in [*before, *while_down, after]}
    assert second.read_ids() == [*while_down, after], "only what is new, in order, nothing twice"
    assert (second.created, second.duplicates) == (3, 0)
    assert not any(batch.history_lost for batch in [*first.batches, *second.batches])


def test_replaying_events_from_an_earlier_token_creates_nothing_new(backend: Backend) -> None:
    backend.put_subscription("a", "orders:*:*:*")
    backend.put_subscription("b", "*:*:*:shipped")
    run = Run(backend.open())
    start = run.token
    assert start is not None
    events = [publish(backend) for _ in range(30)]
    run.through(*events)
    run.close()
    stored = jobs(backend)
    assert len(stored) == 60 and {event for event, _ in stored} == set(events)
    replay = Run(backend.open(), from_token=start)
    replay.through(*events)
    assert jobs(backend) == stored
    assert (replay.created, replay.duplicates) == (0, 60)


def test_a_batch_committed_again_reports_the_jobs_it_wrote_before_as_duplicates(backend: Backend) -> None:
    store = backend.open()
    token = Run(store).token
    first = [job("e1", "a"), job("e2", "a")]
    assert store.commit(counted(first, token)) == CommitReport(jobs_created=2, duplicates=0)
    mixed = [job("e2", "a"), job("e3", "a"), job("e1", "a"), job("e4", "b")]
    assert store.commit(counted(mixed, token)) == CommitReport(jobs_created=2, duplicates=2)
    assert store.commit(counted(mixed, token)) == CommitReport(jobs_created=0, duplicates=4)
    by_id = attrgetter("id")
    written = sorted([*first, mixed[1], mixed[3]], key=by_id)
    assert sorted(backend.stored_jobs(), key=by_id) == written, "a job reads back as the job it was"
    assert backend.projections().subscriptions == {"a": (3, NOW), "b": (1, NOW)}, "each job counted once"


def test_a_job_twice_in_one_batch_is_written_and_counted_once(
    request: pytest.FixtureRequest, backend: Backend
) -> None:
    expect_defect(request, backend, A_JOB_TWICE_IN_ONE_BATCH)
    store = backend.open()
    token = Run(store).token
    twice = [job("e5", "a"), job("e5", "a")]
    assert store.commit(counted(twice, token)) == CommitReport(jobs_created=1, duplicates=1)
    assert backend.jobs() == [("e5", "a")]
    assert backend.projections().subscriptions == {"a": (1, NOW)}


# -- subscriptions as of each event's insert ------------------------------------------------------


def test_a_subscription_committed_before_an_event_applies_to_it(backend: Backend) -> None:
    run = Run(backend.open())
    expected = set()
    for n in range(30):  # read with its event, or before it, in one batch or two
        subscription_id = backend.put_subscription(f"sub-{n}", f"orders:batch{n}:*:*")
        if n % 3 == 0:
            run.step()
        expected.add((publish(backend, f"orders:batch{n}:item:created"), subscription_id))
        if n % 2 == 0:
            run.step()
    run.through(*(event for event, _ in expected))
    # Committed after a batch was read, before its subscriptions were: it applies
    # from the next event on, not to the batch's, inserted before it.
    early = publish(backend, "orders:late:item:created")
    batch = run.read_until(early)
    backend.put_subscription("late", "orders:late:*:*")
    run.process(batch)
    later = publish(backend, "orders:late:item:created")
    run.through(later)
    assert jobs(backend) == {*expected, (later, "late")}


def test_a_change_to_a_subscription_applies_to_later_events_only(backend: Backend) -> None:
    backend.put_subscription("sub", "orders:*:*:*")
    run = Run(backend.open())
    first = publish(backend, SHIPPED)
    run.through(first)
    backend.update_subscription("sub", event_type_pattern="billing:*:*:*")
    second = publish(backend, SHIPPED)
    third = publish(backend, BILLED)
    run.through(second, third)
    backend.update_subscription("sub", active=False)
    fourth = publish(backend, BILLED)
    run.through(fourth)
    backend.put_subscription("sub", "billing:*:*:*")  # replaced whole: active again
    fifth = publish(backend, BILLED)
    run.through(fifth)
    backend.delete_subscription("sub")
    sixth = publish(backend, BILLED)
    run.through(sixth)
    # Created and deleted between two reads: it applies to the events inserted while it existed.
    backend.put_subscription("temporary")
    during = publish(backend, SHIPPED)
    backend.delete_subscription("temporary")
    after = publish(backend, SHIPPED)
    run.through(during, after)
    assert jobs(backend) == {(first, "sub"), (third, "sub"), (fifth, "sub"), (during, "temporary")}
    assert {second, fourth, sixth, after}.isdisjoint(event for event, _ in jobs(backend))


def test_a_restart_matches_the_events_inserted_while_down_against_the_subscriptions_of_their_insert(
    request: pytest.FixtureRequest, backend: Backend
) -> None:
    expect_defect(request, backend, SUBSCRIPTIONS_AS_OF_INSERT_AFTER_A_RESTART)
    backend.put_subscription("gone")
    first = Run(backend.open())
    processed = publish(backend)
    first.through(processed)
    first.close()
    first.store.close()
    while_down = publish(backend)
    backend.put_subscription("late")
    backend.delete_subscription("gone")
    after = publish(backend)
    second = Run(backend.open())
    second.through(while_down, after)
    assert jobs(backend) == {(processed, "gone"), (while_down, "gone"), (after, "late")}


# -- projections: counted once, whatever crashes and replays ---------------------------------------


def test_a_crash_between_a_commit_and_its_count_neither_loses_the_count_nor_makes_it_twice(
    backend: Backend,
) -> None:
    backend.put_subscription("all")
    backend.put_subscription("shipped", "*:*:*:shipped")
    crashed = Run(backend.open(), batch_size=10)
    events = [publish(backend) for _ in range(25)]
    crashed.through(*events[:20])  # full batches, more behind them: a store may count them later
    crashed.close()
    crashed.store.close()  # a crash: what was committed is kept, what the projector held is lost
    events += [publish(backend) for _ in range(3)]
    restarted = Run(backend.open(), batch_size=10)
    restarted.until(lambda: {event for event, _ in jobs(backend)} == set(events), "every event's jobs")
    assert len(jobs(backend)) == 56 and restarted.duplicates == 0
    projections = backend.projections()
    assert projections.event_types == {SHIPPED: 28}
    assert {key: jobs for key, (jobs, _) in projections.subscriptions.items()} == {"all": 28, "shipped": 28}
    assert projections.clients["acme"][:2] == (28, 56)


def test_a_batch_committed_twice_with_its_tally_is_counted_once(
    request: pytest.FixtureRequest, backend: Backend
) -> None:
    expect_defect(request, backend, COUNTED_ONCE_WHEN_REPLAYED)
    store = backend.open()
    start = Run(store).token
    ids = [publish(backend, SHIPPED if n < 2 else BILLED, time=NOW + timedelta(seconds=n)) for n in range(3)]
    entries, token = fed(store, start, ids)
    events = [entry.event() for entry in entries]
    keys = [event_key(entry.order, event) for entry, event in zip(entries, events, strict=True)]
    due = [job for event in events for job in create_jobs(event, [subscription("sub")], NOW)]
    batch = ProcessedBatch(due, [], token, tally=Tally(keys, due, token))
    assert store.commit(batch) == CommitReport(jobs_created=3, duplicates=0)
    assert store.commit(batch) == CommitReport(jobs_created=0, duplicates=3)
    assert backend.projections() == Projections(
        event_types={SHIPPED: 2, BILLED: 1},
        subscriptions={"sub": (3, NOW)},
        clients={"acme": (3, 3, NOW + timedelta(seconds=2))},
    )
    assert backend.open().resume_token() == token


def test_a_client_with_jobs_and_no_events_has_no_latest_event_time(
    request: pytest.FixtureRequest, backend: Backend
) -> None:
    expect_defect(request, backend, NO_EVENT_TIME_WITHOUT_EVENTS)
    store = backend.open()
    token = Run(store).token
    store.commit(counted([job("e1", "a")], token))  # its events counted before, say, and its jobs not
    store.commit(counted([job("e2", "a")], token))
    assert backend.projections().clients == {"acme": (0, 2, None)}


@pytest.mark.parametrize("back", ["to the start", "between the uncounted batches"])
def test_events_committed_uncounted_before_a_crash_are_counted_once_when_the_token_moves_back(
    backend: Backend, back: str
) -> None:
    backend.put_subscription("all")
    crashed = Run(backend.open(), batch_size=10)
    start = crashed.token
    events = [publish(backend) for _ in range(25)]
    crashed.through(*events[:20])  # full batches, more behind: a store may let their counts wait
    middle = crashed.batches[-2].resume_token
    crashed.close()  # a crash: committed, perhaps not counted
    replay = Run(backend.open(), batch_size=10, from_token=start if back == "to the start" else middle)
    replay.until(lambda: {event for event, _ in jobs(backend)} == set(events), "every event's jobs")
    replay.until(lambda: not replay.batches[-1].entries, "a read that finds nothing")
    projections = backend.projections()
    assert projections.event_types == {SHIPPED: 25}
    assert projections.subscriptions["all"][0] == 25
    assert projections.clients["acme"][:2] == (25, 25)


def test_events_replayed_from_an_earlier_token_are_counted_once(
    request: pytest.FixtureRequest, backend: Backend
) -> None:
    expect_defect(request, backend, COUNTED_ONCE_WHEN_REPLAYED)
    backend.put_subscription("all")
    run = Run(backend.open())
    start = run.token
    events = [publish(backend) for _ in range(3)]
    run.through(*events)
    run.close()
    replay = Run(backend.open(), from_token=start)
    replay.through(*events)
    projections = backend.projections()
    assert projections.event_types == {SHIPPED: 3}
    assert projections.subscriptions["all"][0] == 3
    assert projections.clients["acme"][:2] == (3, 3)


# -- fencing ------------------------------------------------------------------------------------------


def test_a_newer_leader_fences_the_store_and_the_deposed_one_writes_nothing(backend: Backend) -> None:
    backend.put_subscription("all")
    old = Run(backend.open())  # leading: its position is saved
    token = old.token
    new = backend.open()
    old.store.fence(5, "a 1")
    with pytest.raises(Fenced) as refused:
        new.fence(5, "b 2")
    assert refused.value.epoch == 5, "the same epoch from another holder is refused"
    new.fence(6, "b 2")
    (entry,), after = fed(new, token, [publish(backend)])
    event = entry.event()
    key = event_key(entry.order, event)
    due = create_jobs(event, [subscription("all")], NOW)
    batch = ProcessedBatch(due, [], after, tally=Tally([key], due, after))
    with pytest.raises(Fenced):
        old.store.commit(batch)
    with pytest.raises(Fenced):
        old.store.count(Tally([key], due, after))
    published = publish(backend)
    with pytest.raises(Fenced):
        old.through(published)  # the loop meets it at its next commit
    assert jobs(backend) == set(), "a deposed leader is turned away before its jobs"
    assert backend.projections() == Projections(), "and counts nothing"
    assert new.commit(batch) == CommitReport(jobs_created=1, duplicates=0)
    assert backend.projections().event_types == {SHIPPED: 1}
    successor = Run(new)
    successor.through(published)
    assert jobs(backend) == {(event.id, "all"), (published, "all")}


# -- dead letters and filter failures -------------------------------------------------------------------


def test_an_invalid_event_is_dead_lettered_once_and_never_stops_the_events_around_it(
    backend: Backend,
) -> None:
    backend.put_subscription("all")
    run = Run(backend.open())
    start = run.token
    before = publish(backend)
    no_client = publish(backend, client_id=None)
    bad_type = publish(backend, "orders:shipped")
    after = publish(backend)
    run.through(before, no_client, bad_type, after)
    assert jobs(backend) == {(before, "all"), (after, "all")}
    letters = backend.dead_letters()
    assert sorted(letter.event_id or "" for letter in letters) == sorted([no_client, bad_type])
    reasons = {letter.event_id: letter.reason for letter in letters}
    assert reasons[no_client].startswith("client_id"), reasons[no_client]
    assert reasons[bad_type].startswith("type"), reasons[bad_type]
    for letter in letters:
        assert str(letter.event_id) in letter.raw and SOURCE in letter.raw, "the raw document is kept"
    lettered = run.processor.metrics.registry.get_sample_value(
        "fc_stream_events_dead_lettered_total", {"reason": "invalid_client_id"}
    )
    assert lettered == 1
    replay = Run(backend.open(), from_token=start)  # a restart from before the batch
    replay.through(before, no_client, bad_type, after)
    assert len(backend.dead_letters()) == 2, "a replay letters an event once"
    assert jobs(backend) == {(before, "all"), (after, "all")}


def test_a_filter_that_fails_fails_its_pair_alone_and_is_recorded_once(backend: Backend) -> None:
    # A regular expression whose worst case on this text is past the budget of an evaluation.
    backend.put_subscription("costly", filters={"payload": ["$[?search(@, 'a{1000}')]"]})
    backend.put_subscription("all")
    run = Run(backend.open())
    start = run.token
    event = publish(backend, data=["b" * 1_000_000])
    run.through(event)
    assert jobs(backend) == {(event, "all")}
    assert backend.dead_letters() == []
    (failure,) = backend.filter_failures()
    assert (failure.event_id, failure.subscription_id, failure.client_id) == (event, "costly", "acme")
    assert failure.reason.startswith("FilterBudgetExceeded"), failure.reason
    replay = Run(backend.open(), from_token=start)
    replay.through(event)
    assert len(backend.filter_failures()) == 1, "a replay records the pair once"


def test_an_event_over_the_size_cap_is_dead_lettered_and_the_rest_go_on(backend: Backend) -> None:
    backend.put_subscription("all")
    run = Run(backend.open(max_event_bytes=100_000))
    small = publish(backend, data={"text": "s" * 2_000})
    large = publish(backend, data={"text": "l" * 200_000})
    after = publish(backend)
    run.through(small, large, after)
    assert jobs(backend) == {(small, "all"), (after, "all")}
    (letter,) = backend.dead_letters()
    assert letter.event_id == large
    assert letter.reason.startswith("document: is ") and "over the limit of 100000" in letter.reason


# -- bounded batches --------------------------------------------------------------------------------------


def test_batches_are_bounded_by_count(backend: Backend) -> None:
    run = Run(backend.open())
    events = [publish(backend) for _ in range(5)]
    first = len(run.batches)
    run.through(*events, max_events=2)
    batches = [batch for batch in run.batches[first:] if batch.entries]
    assert all(len(batch.entries) <= 2 for batch in batches), [ids(batch) for batch in batches]
    assert len(batches[0].entries) == 2 and batches[0].more, "a batch cut by its limit says more wait"
    assert run.read_ids() == events, "in order, none twice"


def test_batches_are_bounded_by_bytes_and_an_event_over_the_budget_comes_alone(backend: Backend) -> None:
    run = Run(backend.open())
    budget = 3_000
    large = publish(backend, data={"text": "l" * 10_000})
    small = [publish(backend, data={"text": "s" * 2_000}) for _ in range(3)]
    first = len(run.batches)
    run.through(large, *small, max_bytes=budget)
    batches = [batch for batch in run.batches[first:] if batch.entries]
    assert ids(batches[0]) == [large], "an event over the budget comes, and alone"
    # A store may close a batch before the event that would pass the budget, or
    # with it; either way no batch holds more than that event past the budget.
    assert all(len(batch.entries) <= 2 for batch in batches[1:]), [ids(batch) for batch in batches]
    assert len(batches) >= 3, "three small events, of more than the budget together"
    assert all(batch.more for batch in batches[:-1]), "a batch cut by bytes says more wait"
    assert run.read_ids() == [large, *small], "in order, none twice"


# -- the operator tools: re-drive and backfill (Repairs) ----------------------------------------


def test_a_backfill_creates_a_new_subscription_s_jobs_for_past_events_once(backend: Backend) -> None:
    run = Run(backend.open())
    shipped = [publish(backend) for _ in range(3)]
    packed = publish(backend, PACKED)
    other_client = publish(backend, client_id="globex")
    invalid = publish(backend, "orders:shipped")
    run.through(*shipped, packed, other_client, invalid)
    assert jobs(backend) == set(), "no subscription yet"
    backend.put_subscription("late", "orders:*:*:shipped")
    token = run.store.resume_token()

    first = backfill(backend.repairs(), "late")
    assert (first.created, first.skipped, first.examined, first.left) == (3, 0, 5, 1), "not globex's"
    assert jobs(backend) == {(event, "late") for event in shipped}
    again = backfill(backend.repairs(), "late")
    assert (again.created, again.skipped) == (0, 3), "a second run creates nothing"
    assert jobs(backend) == {(event, "late") for event in shipped}
    assert backend.projections().subscriptions["late"][0] == 3, "counted once"
    assert run.store.resume_token() == token, "the processor's position is untouched"
    Run(backend.open()).step()  # a restart's recount counts them no more
    assert backend.projections().subscriptions["late"][0] == 3


def test_a_backfill_since_a_time_after_every_event_reads_none_and_one_before_them_reads_all(
    backend: Backend,
) -> None:
    backend.put_subscription("all")
    events = [publish(backend) for _ in range(3)]
    repairs = backend.repairs()
    for late in (datetime(2999, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)):
        assert backfill(repairs, "all", since=late).examined == 0, late
    assert jobs(backend) == set()
    assert backfill(repairs, "all", since=datetime(1, 1, 1, tzinfo=UTC)).created == 3
    assert jobs(backend) == {(event, "all") for event in events}


def test_a_backfill_stopped_at_its_limit_resumes_from_its_next_position(backend: Backend) -> None:
    backend.put_subscription("all")
    events = [publish(backend) for _ in range(5)]
    repairs = backend.repairs()
    part = backfill(repairs, "all", limits=Limits(items=2))
    assert (part.created, part.next is not None) == (2, True)
    rest = backfill(repairs, "all", after=part.next)
    assert (rest.created, rest.skipped, rest.next) == (3, 0, None)
    assert jobs(backend) == {(event, "all") for event in events}


def test_a_backfill_beside_a_live_processor_loses_nothing_and_counts_each_job_once(backend: Backend) -> None:
    backend.put_subscription("all")
    run = Run(backend.open())
    before = [publish(backend) for _ in range(3)]
    run.through(before[0])
    during = [publish(backend) for _ in range(3)]
    report = backfill(backend.repairs(), "all")  # some of the events the processor has not read yet
    after = [publish(backend) for _ in range(2)]
    run.through(*before, *during, *after)
    everything = {(event, "all") for event in [*before, *during, *after]}
    assert jobs(backend) == everything
    assert report.created + run.created == len(everything), "each job made once, by one of them"
    restart = Run(backend.open())  # a recount after a restart counts nothing again
    restart.step()
    assert backend.projections().subscriptions["all"][0] == len(everything)


def test_redriving_a_mended_dead_letter_makes_its_jobs_counts_it_and_removes_it(backend: Backend) -> None:
    backend.put_subscription("all")
    run = Run(backend.open())
    mended = publish(backend, "orders:shipped")
    still_bad = publish(backend, client_id=None)
    run.through(mended, still_bad)
    assert len(backend.dead_letters()) == 2
    backend.mend_event(mended, type=SHIPPED)

    report = redrive_dead_letters(backend.repairs())
    assert (report.examined, report.created, report.resolved, report.left) == (2, 1, 1, 1)
    (reason,) = report.reasons
    assert reason.startswith("still invalid: client_id"), reason
    assert jobs(backend) == {(mended, "all")}
    assert [letter.event_id for letter in backend.dead_letters()] == [still_bad]
    assert backend.projections().event_types == {SHIPPED: 1}, "the mended event is counted, once"
    again = redrive_dead_letters(backend.repairs())
    assert (again.created, again.resolved, again.left) == (0, 0, 1)
    restart = Run(backend.open())
    restart.step()
    assert backend.projections().event_types == {SHIPPED: 1}


def test_redriving_dead_letters_by_reason_takes_those_alone(backend: Backend) -> None:
    backend.put_subscription("all")
    run = Run(backend.open())
    no_type = publish(backend, None)
    no_client = publish(backend, client_id=None)
    run.through(no_type, no_client)
    backend.mend_event(no_type, type=SHIPPED)
    backend.mend_event(no_client, client_id="acme")
    report = redrive_dead_letters(backend.repairs(), reason="client_id")
    assert (report.examined, report.created) == (1, 1)
    assert jobs(backend) == {(no_client, "all")}
    assert [letter.event_id for letter in backend.dead_letters()] == [no_type]


def test_a_redrive_of_one_event_s_letter_reads_that_letter_alone_whatever_its_limit(backend: Backend) -> None:
    backend.put_subscription("all")
    run = Run(backend.open())
    letters = [publish(backend, client_id=None) for _ in range(3)]
    run.through(*letters)
    backend.mend_event(letters[2], client_id="acme")
    report = redrive_dead_letters(backend.repairs(), event_id=letters[2], limits=Limits(items=1))
    assert (report.examined, report.created, report.resolved) == (1, 1, 1), report
    assert jobs(backend) == {(letters[2], "all")}
    assert sorted(letter.event_id or "" for letter in backend.dead_letters()) == sorted(letters[:2])


def test_retrying_filter_failures_once_the_filter_is_fixed_makes_the_jobs_due_and_clears_them(
    backend: Backend,
) -> None:
    backend.put_subscription("costly", filters={"payload": ["$[?search(@, 'a{1000}')]"]})
    run = Run(backend.open())
    event = publish(backend, data=["b" * 1_000_000])
    run.through(event)
    assert len(backend.filter_failures()) == 1
    unchanged = retry_filter_failures(backend.repairs())
    assert (unchanged.created, unchanged.left, len(backend.filter_failures())) == (0, 1, 1)

    backend.update_subscription("costly", filters={"payload": ["$[?search(@, 'b')]"]})
    elsewhere = retry_filter_failures(backend.repairs(), subscription_id="all", limits=Limits(items=1))
    assert (elsewhere.examined, elsewhere.next) == (0, None), "another subscription's: none"
    report = retry_filter_failures(backend.repairs(), subscription_id="costly", limits=Limits(items=1))
    assert (report.created, report.resolved, report.left) == (1, 1, 0)
    assert jobs(backend) == {(event, "costly")}
    assert backend.filter_failures() == []
    assert retry_filter_failures(backend.repairs()).examined == 0
    after = backfill(backend.repairs(), "costly")
    assert (after.created, after.skipped) == (0, 1), "the retried job is the pair's one job"
