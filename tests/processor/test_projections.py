"""The projector's policy: what is counted when, whatever the store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from processor.jobs import create_jobs
from processor.models import Event, Subscription, parse_event
from processor.projections import ProjectionDelta, Projector, Tally, Uncounted, event_key
from processor.stores.base import Batch, CommitReport, FeedEntry, StoreUnavailable

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SUBSCRIPTION = Subscription.model_validate(
    {
        "id": "all",
        "client_id": "acme",
        "name": "all",
        "event_type_pattern": "*:*:*:*",
        "target": "https://hooks.example.com/in",
        "pool_code": "default",
    }
)


class Sink:
    """A store's projection sink, reduced to what it was asked."""

    def __init__(self, fold_events: int, uncounted: Uncounted | None = None) -> None:
        self.fold_events = fold_events
        self.tallies: list[Tally] = []
        self._uncounted = uncounted or Uncounted((), [], "0")
        self.unavailable = False

    def uncounted(self) -> Uncounted:
        return self._uncounted

    def count(self, tally: Tally) -> None:
        if self.unavailable:
            raise StoreUnavailable("busy")
        self.tallies.append(tally)


def event(n: int) -> Event:
    return parse_event({"id": f"e{n}", "type": "a:b:c:d", "client_id": "acme", "time": NOW}, NOW)


def entry(document: dict[str, Any]) -> FeedEntry:
    return FeedEntry(0, "0", None, document, lambda: ("",), NOW)


def step(projector: Projector, first: int, count: int, *, more: bool) -> Tally | None:
    """One batch of ``count`` events, committed: the tally that went with it."""
    events = [event(n) for n in range(first, first + count)]
    keys = [event_key(n, e) for n, e in enumerate(events, first + 1)]
    jobs = [job for e in events for job in create_jobs(e, [SUBSCRIPTION], NOW)]
    batch = Batch([], str(first + count), more)
    tally = projector.due(batch, keys, jobs)
    projector.committed(batch, keys, CommitReport(len(jobs), 0, jobs), counted=tally is not None)
    return tally


def test_a_batch_that_caught_up_is_counted_with_its_commit() -> None:
    tally = step(Projector(Sink(fold_events=100)), 0, 3, more=False)
    assert tally is not None and tally.through == "3"
    delta = ProjectionDelta.of(tally.events, tally.jobs)
    assert delta.event_types == {"a:b:c:d": 3} and delta.subscription_jobs == {"all": 3}


def test_while_behind_events_wait_until_fold_events_of_them_are_due_together() -> None:
    projector = Projector(Sink(fold_events=5))
    assert step(projector, 0, 2, more=True) is None
    assert step(projector, 2, 2, more=True) is None
    tally = step(projector, 4, 2, more=True)
    assert tally is not None, "six events wait: due"
    assert [key[1] for key in tally.events] == [f"e{n}" for n in range(6)] and len(tally.jobs) == 6
    assert tally.through == "6"
    assert step(projector, 6, 1, more=True) is None, "what was counted waits no more"


def test_a_store_that_cannot_recount_counts_every_batch() -> None:
    projector = Projector(Sink(fold_events=0))
    assert step(projector, 0, 1, more=True) is not None


def test_a_batch_without_a_position_is_neither_counted_nor_kept() -> None:
    sink = Sink(fold_events=0)
    projector = Projector(sink)
    keys = [event_key(1, event(0))]
    batch = Batch([], None)
    assert projector.due(batch, keys, []) is None
    projector.committed(batch, keys, CommitReport(0, 0), counted=False)
    projector.flush()
    assert sink.tallies == [], "it comes again, and is counted then"


def test_a_read_that_finds_nothing_counts_what_waits_and_a_busy_store_keeps_it_waiting() -> None:
    sink = Sink(fold_events=100)
    projector = Projector(sink)
    step(projector, 0, 2, more=True)
    sink.unavailable = True
    with pytest.raises(StoreUnavailable):
        projector.flush()
    sink.unavailable = False
    projector.flush()
    assert [len(t.events) for t in sink.tallies] == [2] and sink.tallies[0].through == "2"
    projector.flush()
    assert len(sink.tallies) == 1, "nothing waits any more"


def test_the_recount_at_start_validates_what_the_store_left_and_skips_the_invalid_ones() -> None:
    valid = {"id": "e1", "type": "a:b:c:d", "client_id": "acme", "time": "2024-05-01T12:00:00Z"}
    invalid = {"id": "e2", "type": "not-a-type", "client_id": "acme", "time": "2024-05-01T12:00:00Z"}
    left = Uncounted([entry(valid), entry(invalid)], [], "7")
    sink = Sink(fold_events=100, uncounted=left)
    Projector(sink).recount()
    (tally,) = sink.tallies
    assert [key[1] for key in tally.events] == ["e1"] and tally.through == "7"
