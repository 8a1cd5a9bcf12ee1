"""What the processor loop needs of a store, and nothing more: the contract
every store implements, in roles.

- ``EventFeed``: a change feed of raw event documents in commit order.
- ``SubscriptionSource``: the subscriptions that changed since it was last asked.
- ``JobSink``: a processed batch taken back in one call (jobs, dead letters,
  filter failures, the position, and the projections' tally when one is due).
- ``Offsets``: the position the feed resumes from, kept per ``partition``, and
  fenced so that a deposed leader cannot move it.
- ``ProjectionSink``: tallies applied with the marks that make them count once.
- ``Repairs``: what the operator tools read and write beside a live
  processor (``processor.remedies``), never touching its position.

One class may implement several roles (the embedded store implements all of
them, for its single transaction). How the batch is made durable is the
store's business: the loop only promises to call ``commit`` once per batch, in
order, and never to move on before ``commit`` returned.

Errors, the three a store may raise on purpose: ``StoreUnavailable`` (retried
with backoff), ``Fenced`` (the lead ends), ``StoreMisconfigured`` (the process
stops: an operator must act). ``tests/stores/test_contract.py`` is the
definition of a correct store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from processor.models import DeadLetter, DispatchJob, Event, FilterFailure, InvalidEvent, parse_event
from processor.projections import EventKey, Tally, Uncounted

ResumeToken = str
"""A position in a store's feed, as text a person can read (``redis-cli GET``)."""


class StoreUnavailable(Exception):
    """The store cannot be reached or refused a write for now; try again later."""


class Fenced(Exception):
    """A newer leader has saved progress: this instance was deposed and must stop.

    ``epoch`` is the epoch the store holds, when it said: a leader that still
    holds its lock raises its own epoch past it (``LeaderLock.advance``), for
    only a leader from before the lock's Redis lost its data can have written it."""

    def __init__(self, message: str, epoch: int | None = None) -> None:
        super().__init__(message)
        self.epoch = epoch


BATCH_BYTES = 8 * 1024 * 1024  # FC_STREAM_BATCH_BYTES
MAX_EVENT_BYTES = 16 * 1024 * 1024  # FC_STREAM_MAX_EVENT_BYTES: MongoDB's limit on a document


class StoreMisconfigured(Exception):
    """The store is set up so that the processor cannot keep its promises (a
    missing unique index, say); retrying will not help, an operator must act."""


class FeedEntry(NamedTuple):
    """One inserted event, as the store holds it. A named tuple: one is built per
    event, and a frozen dataclass takes three times as long to build."""

    order: int  # grows in commit order; compared with SubscriptionChange.effective_after
    position: str
    event_id: str | None  # when the store could tell, even of an undecodable record
    document: dict[str, Any] | None  # None when the record could not be decoded
    # The record as stored, as text in pieces (an event too large to be read is
    # never held whole); only a dead letter needs it.
    raw: Callable[[], Iterable[str]]
    received_at: datetime
    problem: str | None = None  # why ``document`` is None

    def event(self) -> Event:
        """The event this entry holds; ``InvalidEvent`` if it holds none."""
        if self.document is None:
            raise InvalidEvent(self.problem or "undecodable", "undecodable")
        return parse_event(self.document, self.received_at)


@dataclass(frozen=True, slots=True)
class Batch:
    entries: list[FeedEntry]
    resume_token: ResumeToken | None  # resume after this batch; may move on an empty one
    more: bool = False  # events wait beyond it: the batch was cut by its limits, not by the feed's end
    history_lost: bool = False  # the feed lost its place before this batch, and recovered what it could


@dataclass(frozen=True, slots=True)
class SubscriptionChange:
    """A subscription as one write left it, and from which event on it applies.

    It applies to the events whose ``FeedEntry.order`` is greater than
    ``effective_after``: those inserted after the write committed. So an event
    is matched against the subscriptions as they were when it was inserted,
    however far behind the processor runs.
    """

    subscription_id: str
    document: dict[str, Any] | None  # None: deleted, or unreadable (``problem``)
    effective_after: int
    # Why the stored subscription could not be read at all (bytes no decoder
    # takes), said by the store: it applies as a deletion and counts as invalid.
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class ProcessedBatch:
    jobs: list[DispatchJob]
    dead_letters: list[DeadLetter]
    resume_token: ResumeToken | None
    filter_failures: list[FilterFailure] = field(default_factory=list)
    tally: Tally | None = None  # due to be counted in the projections, with this commit
    # Each event's place in the feed (its ``FeedEntry.order``), by id: a store may
    # key its jobs by it, so that its indexes grow in the feed's order.
    orders: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CommitReport:
    jobs_created: int
    duplicates: int  # jobs that already existed: replayed events
    created: Sequence[DispatchJob] = field(default=(), compare=False)  # the jobs this commit wrote


class ChangeFeed(Protocol):
    def next_batch(self, max_events: int, max_wait: float, max_bytes: int = BATCH_BYTES) -> Batch:
        """At most ``max_events`` entries after the previous batch, of about
        ``max_bytes`` together (but always one, however large); waits up to
        ``max_wait`` seconds for the first one, then returns what it has. An
        event over the store's ``max_event_bytes`` is handed out undecoded.

        The embedded store reads sizes first: its batches stay within the
        budget, and an event over the cap comes alone, never read. A change
        stream cannot put an event back: on MongoDB the event that reaches the
        budget closes the batch (MongoDB keeps a document under 16 MiB)."""

    def close(self) -> None: ...


class EventFeed(Protocol):
    def open_feed(self, resume_after: ResumeToken | None) -> ChangeFeed:
        """The feed from just after ``resume_after``; from the current point on a
        first start (None), which it records at once where it can."""


class SubscriptionSource(Protocol):
    def subscription_changes(self) -> list[SubscriptionChange]:
        """In commit order: on the first call after ``open_feed`` every
        subscription as it stood at the feed's start, then each change since;
        every change committed before the call is in it."""


class JobSink(Protocol):
    def commit(self, batch: ProcessedBatch) -> CommitReport:
        """Make the batch durable: jobs (a job that exists already is not an
        error), dead letters, filter failures (one per pair, whatever replays),
        the batch's ``tally`` when it carries one, and last the resume token.
        A crash keeps the token only with all the rest. Raises ``Fenced`` when
        a leader with a larger epoch, or another holder of this one, saved a token."""


class Offsets(Protocol):
    """The position of one ``partition`` of the stream: today one partition, the
    whole stream, named by ``FC_STREAM_RESUME_TOKEN_KEY``. Positions of
    different partitions are kept and fenced apart, so that several leaders,
    each owning part of the stream, are a matter of configuration."""

    @property
    def partition(self) -> str: ...

    def resume_token(self) -> ResumeToken | None:
        """Where the last committed batch ended; None on a first start."""

    def fence(self, epoch: int, holder: str) -> None:
        """Save resume tokens under ``epoch`` from now on, claiming the token at
        once, so that writes under a smaller epoch, or under the same epoch by
        another ``holder``, are refused. Raises ``Fenced`` (with the store's
        epoch) when the store holds a larger one, or this one from another holder."""


class ProjectionSink(Protocol):
    """Where the projector's tallies are applied (``processor.projections``)."""

    @property
    def fold_events(self) -> int:
        """How many committed events may wait to be counted while the feed is
        behind: 0 for a store that could not find them again after a crash."""

    def uncounted(self) -> Uncounted:
        """After ``open_feed``: what the last run committed and did not count (a
        crash came between), and where the feed starts."""

    def count(self, tally: Tally) -> None:
        """Apply ``tally`` outside a batch, with its marks, in one write; refused
        (``Fenced``) as a commit would be."""


@dataclass(frozen=True, slots=True)
class StoredLetter:
    """A dead letter as a store holds it: ``key`` is what removes it."""

    key: str
    letter: DeadLetter


@dataclass(frozen=True, slots=True)
class StoredFailure:
    """A filter failure as a store holds it: ``key`` is what removes it."""

    key: str
    failure: FilterFailure


@dataclass(frozen=True, slots=True)
class Repair:
    """One write of the operator tools. ``jobs``: due and maybe missing (one
    that exists is not an error); ``events``: events that were dead letters and
    are valid now, to be counted in the projections with the jobs this write
    creates; ``filter_failures``: pairs that failed now (one per pair, as a
    commit keeps them); ``letters`` and ``failures``: the keys of those now resolved."""

    jobs: list[DispatchJob] = field(default_factory=list)
    events: list[EventKey] = field(default_factory=list)
    filter_failures: list[FilterFailure] = field(default_factory=list)
    letters: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    orders: Mapping[str, int] = field(default_factory=dict)  # as ``ProcessedBatch.orders``


class Repairs(Protocol):
    """What the operator tools need of a store, beside a live processor: what
    is stored now, read in pages after a cursor; and writes that neither move,
    claim nor fence any position (a processor's or another tool's)."""

    def current_subscriptions(self) -> list[SubscriptionChange]:
        """Every stored subscription as it stands now (``effective_after`` -1)."""

    def event(self, event_id: str) -> FeedEntry | None:
        """The stored event of that id, as the feed would hand it out."""

    def events(self, after: str | None, since: datetime | None, limit: int) -> list[FeedEntry]:
        """At most ``limit`` stored events in the store's order, after the one whose
        ``position`` is ``after`` (a page's last is the cursor of the next), or,
        without it, from the first inserted at ``since`` or later. ``ValueError``
        for an ``after`` that is no position of this store."""

    def letter_event(self, letter: DeadLetter) -> FeedEntry | None:
        """The event a dead letter was made of, read again (an operator may have
        mended it since); None when it can no longer be found."""

    def dead_letters(self, after: str | None, limit: int, event_id: str | None = None) -> list[StoredLetter]:
        """At most ``limit`` dead letters in key order after the key ``after``;
        only ``event_id``'s when it is given (chosen by the store, so that a
        limit counts the letters wanted, not those passed over)."""

    def filter_failures(
        self,
        after: str | None,
        limit: int,
        *,
        event_id: str | None = None,
        subscription_id: str | None = None,
    ) -> list[StoredFailure]:
        """At most ``limit`` filter failures in key order after the key ``after``;
        only ``event_id``'s, or ``subscription_id``'s, when given."""

    def repair(self, repair: Repair) -> CommitReport:
        """Write the jobs that are missing, remove the resolved dead letters and
        filter failures, and count the events and the jobs created in the
        projections, once; running it again creates and counts nothing more."""

    def close(self) -> None: ...


class Store(EventFeed, SubscriptionSource, JobSink, Offsets, ProjectionSink, Protocol):
    """Every role: what the loop is given."""

    def close(self) -> None: ...
