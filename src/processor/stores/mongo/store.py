"""The MongoDB store: the events collection's change stream, and the
repositories of subscriptions, dispatch jobs, dead letters and projections.

Loss and duplication are ruled out where implementations of this design
usually fail:

- the resume token is saved only after its batch is written, with the
  position (cluster time) of the last processed event;
- when the stored token has left the oplog, a new stream is opened first and
  the events collection is read from that position up to where the stream
  starts, so nothing inserted in between is skipped (job ids are deterministic
  and unique, so the overlap costs nothing);
- jobs are inserted with ``insert_many(ordered=False)``: a duplicate key means
  the job exists already, any other write error is retried;
- projections are updated in a transaction together with marks of the events
  and jobs they counted, so a replayed batch is never counted twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from functools import partial

import pymongo
from pymongo import UpdateOne
from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, OperationFailure

from processor.jobs import job_id
from processor.models import DeadLetter, DispatchJob, FilterFailure
from processor.projections import EventKey, ProjectionDelta, Tally, Uncounted
from processor.stores.base import (
    MAX_EVENT_BYTES,
    CommitReport,
    Fenced,
    ProcessedBatch,
    StoreUnavailable,
    SubscriptionChange,
)
from processor.stores.mongo.checkpoint import Checkpoint, newer
from processor.stores.mongo.documents import (
    CHECKPOINTS,
    CLIENT_ACTIVITY,
    DEAD_LETTERS,
    DUPLICATE_KEY,
    EVENT_TYPE_COUNTS,
    FILTER_FAILURES,
    IDLE_CHECKPOINT_SECONDS,
    JOBS,
    PROJECTION_MARKS,
    SUBSCRIPTION_STATS,
    Document,
    dead_letter_document,
    job_document,
    unavailable_on_failure,
)
from processor.stores.mongo.feed import CATCH_UP_SKEW, MongoFeed
from processor.stores.mongo.subscriptions import MongoSubscriptions
from processor.stores.mongo.tokens import TokenStore

log = logging.getLogger(__name__)

MARKS_PER_TRANSACTION = 5_000  # events and jobs counted in one transaction at most
COMMAND_BYTES = 8 * 1024 * 1024  # the documents of one write command at most: a message takes 16 MB
DOCUMENT_BYTES = 512  # a projection's or a mark's document, less its key, at most
TRANSACTION_SECONDS = 10.0  # a transaction and the driver's retries of it, at most


class MongoStore:
    """The production store. Its position is its own: each batch's checkpoint
    is written to ``stream_checkpoints`` in the transaction that counts the
    batch in the projections, under the leader's epoch and holder; the token
    store (Redis, as the spec has it) keeps a mirror, read too at start, so
    that a Redis that lost its data, or none at all, never moves the position."""

    def __init__(
        self,
        database: Database[Document],
        tokens: TokenStore,
        max_event_bytes: int = MAX_EVENT_BYTES,
        checkpoint_key: str = "stream-processor",
        catch_up_skew: timedelta = CATCH_UP_SKEW,
    ) -> None:
        self.database = database
        self._catch_up_skew = catch_up_skew
        self._max_event_bytes = max_event_bytes
        self._tokens = tokens
        self._subscriptions = MongoSubscriptions(database)
        self._feed: MongoFeed | None = None  # the last opened: its events' time bounds the subscriptions read
        self._jobs = database[JOBS]
        self._checkpoints = database[CHECKPOINTS]
        self._checkpoint_key = checkpoint_key
        self._epoch: int | None = None
        self._holder: str | None = None
        self._saved_at = -IDLE_CHECKPOINT_SECONDS  # monotonic time of the last checkpoint written
        self._inserted_before_failure: set[str] = set()  # by failed attempts at the batch in hand

    def resume_token(self) -> str | None:
        with unavailable_on_failure("load the checkpoint"):
            saved = self._checkpoints.find_one({"_id": self._checkpoint_key})
        durable = None if saved is None else saved.get("checkpoint")
        try:
            mirror = self._tokens.load()
        except StoreUnavailable as error:
            if durable is None:
                raise
            log.warning(
                "the resume token's mirror cannot be read (%s): resuming from the store's checkpoint", error
            )
            mirror = None
        return newer(durable, mirror)

    def _claim(self, session: ClientSession | None) -> None:
        """Refuse (``Fenced``) when the checkpoint was saved under a larger epoch,
        or under this one by another holder; read in the transaction that writes it."""
        saved = self._checkpoints.find_one({"_id": self._checkpoint_key}, session=session) or {}
        epoch, holder = saved.get("epoch"), saved.get("holder")
        if epoch is None:
            return
        if self._epoch is None or epoch > self._epoch or (epoch == self._epoch and holder != self._holder):
            raise Fenced(
                f"checkpoint {self._checkpoint_key!r} was saved under epoch {epoch} "
                f"by {holder or 'a leader'}; "
                f"this instance writes under {self._epoch}",
                epoch,
            )

    def _save_checkpoint(self, session: ClientSession | None, token: str | None) -> None:
        self._claim(session)
        fields: Document = {"epoch": self._epoch, "holder": self._holder, "saved_at": datetime.now(UTC)}
        if token is not None:
            fields["checkpoint"] = token
        self._checkpoints.update_one(
            {"_id": self._checkpoint_key}, {"$set": fields}, upsert=True, session=session
        )

    def open_feed(self, resume_after: str | None) -> MongoFeed:
        checkpoint = Checkpoint.loads(resume_after)
        # A new feed starts from a fresh load of the subscriptions, as they stood
        # where it resumes: at (or after) the checkpoint's cluster time.
        self._subscriptions.start(None if checkpoint is None else checkpoint.cluster_time)
        self._inserted_before_failure.clear()
        self._feed = MongoFeed(
            self.database,
            checkpoint,
            max_event_bytes=self._max_event_bytes,
            skew=self._catch_up_skew,
        )
        return self._feed

    def subscription_changes(self) -> list[SubscriptionChange]:
        return self._subscriptions.changes(None if self._feed is None else self._feed.streamed_through)

    def fence(self, epoch: int, holder: str) -> None:
        self._epoch, self._holder = epoch, holder  # what the claim checks, and writes
        with unavailable_on_failure("claim the checkpoint"):
            in_transaction(self.database, lambda session: self._save_checkpoint(session, None))
        try:
            self._tokens.fence(epoch, holder)
        except StoreUnavailable as error:  # the mirror; the store's claim is made
            log.warning("the resume token's mirror was not claimed (%s); the store's checkpoint was", error)

    def commit(self, batch: ProcessedBatch) -> CommitReport:
        with unavailable_on_failure("commit"):
            # Jobs are written outside the transaction (an existing one is done,
            # which a transaction would abort on): a deposed leader is turned
            # away before them, and, should it be deposed meanwhile, its jobs
            # are the ones due anyway (their ids are the pairs').
            self._claim(None)
            created = insert_jobs(self._jobs, batch.jobs, self._inserted_before_failure)
            self._insert_dead_letters(batch.dead_letters)
            insert_filter_failures(self.database, batch.filter_failures)
            self._project(batch.tally, batch.resume_token)
        if batch.resume_token is not None:
            self._mirror(batch.resume_token)
        self._inserted_before_failure.clear()
        return CommitReport(len(created), len(batch.jobs) - len(created), created)

    def _mirror(self, token: str) -> None:
        """The token store's copy: the durable checkpoint is written already, so
        a Redis that cannot be reached holds nothing back (a newer leader does)."""
        try:
            self._tokens.save(token)
        except StoreUnavailable as error:
            log.warning("the resume token's mirror was not saved (%s); the store's checkpoint was", error)

    def _insert_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        self.database[DEAD_LETTERS].bulk_write(
            [
                UpdateOne(
                    # By event when known: a catch-up re-reads events under other positions.
                    {"_id": letter.position if letter.event_id is None else letter.event_id},
                    {"$setOnInsert": dead_letter_document(letter)},
                    upsert=True,
                )
                for letter in letters
            ],
            ordered=False,
        )

    @property
    def partition(self) -> str:
        return self._checkpoint_key

    fold_events = 0
    """Every batch is counted with its commit: a change stream cannot be read
    again for the events a crash left uncounted."""

    def uncounted(self) -> Uncounted:
        return Uncounted((), [], None)

    def count(self, tally: Tally) -> None:
        with unavailable_on_failure("count"):
            self._project(tally, None)

    def _project(self, tally: Tally | None, token: str | None) -> None:
        """Count each event and each job once, ever, and save the checkpoint: in a
        transaction, check the claim, mark what is counted and count what was not
        marked yet. A large tally takes several transactions of at most
        ``MARKS_PER_TRANSACTION`` marks each (a transaction's reads and writes stay
        far under 16 MB); the marks make each one idempotent, and the checkpoint
        is saved with the last, so a crash between them loses nothing."""
        events = [] if tally is None else tally.events
        jobs = [] if tally is None else tally.jobs
        idle = token is None or time.monotonic() - self._saved_at < IDLE_CHECKPOINT_SECONDS
        if not events and not jobs and idle:
            # An empty batch's position loses nothing by waiting; and saving it
            # writes to the oplog, which moves the idle stream's token again.
            return
        parts = in_parts(events, jobs)
        for number, (some_events, some_jobs) in enumerate(parts):
            saved = token if number == len(parts) - 1 else None
            in_transaction(
                self.database, partial(self._count_part, events=some_events, jobs=some_jobs, token=saved)
            )
        if token is not None:
            self._saved_at = time.monotonic()

    def _count_part(
        self, session: ClientSession, *, events: list[EventKey], jobs: list[DispatchJob], token: str | None
    ) -> None:
        self._save_checkpoint(session, token)  # first: refused, it writes nothing
        count_marked(self.database, session, events, jobs)

    def close(self) -> None:
        self._subscriptions.close()


def insert_jobs(
    collection: Collection[Document], jobs: Sequence[DispatchJob], before: set[str]
) -> list[DispatchJob]:
    """Insert every job; one that exists already is done. Returns those that were
    new, counting those a failed attempt at the same jobs inserted (``before``:
    their ids, which a failure adds to)."""
    if not jobs:
        return []
    try:
        collection.insert_many([job_document(j) for j in jobs], ordered=False)
        return list(jobs)
    except BulkWriteError as error:
        errors = error.details.get("writeErrors", [])
        failed = {e.get("index") for e in errors}
        fresh = {job.id for n, job in enumerate(jobs) if n not in failed}
        others = [e for e in errors if e.get("code") != DUPLICATE_KEY]
        # A write concern error: written on the primary, not yet as durable as
        # asked (a rollback could take the jobs back), so not done.
        others += error.details.get("writeConcernErrors") or []
        if others:  # retried as a whole: what this attempt inserted will be a duplicate then
            before |= fresh
            raise StoreUnavailable(f"inserting jobs: {others[0].get('errmsg')}") from error
        created = fresh | ({jobs[n].id for n in failed} & before)
        return list({job.id: job for job in jobs if job.id in created}.values())  # equal jobs: one


def insert_filter_failures(database: Database[Document], failures: Sequence[FilterFailure]) -> None:
    """Each pair once, whatever replays: keyed by the job id the pair would have."""
    if not failures:
        return
    database[FILTER_FAILURES].bulk_write(
        [
            UpdateOne(
                {"_id": job_id(failure.event_id, failure.subscription_id)},
                {"$setOnInsert": asdict(failure)},
                upsert=True,
            )
            for failure in failures
        ],
        ordered=False,
    )


def in_transaction(database: Database[Document], callback: Callable[[ClientSession], None]) -> None:
    """Run ``callback`` in a transaction, retried by the driver while MongoDB
    labels its failures transient, for ``TRANSACTION_SECONDS`` at most (the
    driver's own bound is 120 s, longer than a stop may wait)."""
    with database.client.start_session() as session, pymongo.timeout(TRANSACTION_SECONDS):
        session.with_transaction(callback)


def count_marked(
    database: Database[Document], session: ClientSession, events: list[EventKey], jobs: list[DispatchJob]
) -> None:
    """In ``session``'s transaction: mark the events and jobs counted, and count
    those that were not marked yet."""
    keys = [f"event:{e[1]}" for e in events] + [_job_mark(j) for j in jobs]  # e[1]: the event's id
    if not keys:
        return
    marks = database[PROJECTION_MARKS]
    seen = {d["_id"] for d in marks.find({"_id": {"$in": keys}}, {"_id": 1}, session=session)}
    # Each key once, whatever the batch holds twice (two _ids that read as
    # one id): a mark inserted twice would abort the transaction at every retry.
    counted = seen.copy()
    delta = ProjectionDelta.of(
        (e for e in events if _first(f"event:{e[1]}", counted)),
        (j for j in jobs if _first(_job_mark(j), counted)),
    )
    now = datetime.now(UTC)
    new = [{"_id": key, "at": now} for key in dict.fromkeys(keys) if key not in seen]
    _write(database, session, "insert", PROJECTION_MARKS, documents=new)
    _apply(database, delta, session)


def _apply(database: Database[Document], delta: ProjectionDelta, session: ClientSession) -> None:
    events = [
        {"q": {"_id": t}, "u": {"$inc": {"count": n}}, "upsert": True} for t, n in delta.event_types.items()
    ]
    subscriptions = [
        {
            "q": {"_id": key},
            "u": {"$inc": {"jobs_created": jobs}, "$max": {"last_matched_at": last}},
            "upsert": True,
        }
        for key, jobs, last in delta.subscription_rows()
    ]
    clients = [
        {
            "q": {"_id": key},
            "u": {"$inc": {"events": events, "jobs": jobs}}
            | ({"$max": {"last_event_time": last}} if last else {}),
            "upsert": True,
        }
        for key, events, jobs, last in delta.client_rows()
    ]
    _write(database, session, "update", EVENT_TYPE_COUNTS, updates=events)
    _write(database, session, "update", SUBSCRIPTION_STATS, updates=subscriptions)
    _write(database, session, "update", CLIENT_ACTIVITY, updates=clients)


def _write(
    database: Database[Document], session: ClientSession, command: str, name: str, **items: list[Document]
) -> None:
    """Write commands of a transaction, sent as they are: pymongo's bulk API
    makes an object, a validation and a batch of each write, several times
    the cost of the write on the wire, and a transaction has no use for its
    retries (it is retried as a whole). Split as bulk writes are, by size: a
    command travels in one message of at most 16 MB, and keys (event types,
    ids) are as long as producers made them. A write error, returned with
    ``ok: 1``, is raised."""
    ((field, documents),) = items.items()
    for part in _by_size(documents, _insert_key if command == "insert" else _update_key):
        reply = database.command({command: name, field: part, "ordered": False}, session=session)
        if errors := reply.get("writeErrors"):
            raise OperationFailure(errors[0].get("errmsg", "a write failed"), errors[0].get("code"), reply)


def _insert_key(document: Document) -> str:
    return str(document["_id"])


def _update_key(statement: Document) -> str:
    return str(statement["q"]["_id"])


def _by_size(documents: list[Document], key: Callable[[Document], str]) -> Iterator[list[Document]]:
    """``documents`` in runs of at most ``COMMAND_BYTES``, one larger alone. A
    document's size is bounded from its key (four bytes a character, as UTF-8 at
    most) and ``DOCUMENT_BYTES`` for the rest, counts and times of fixed size:
    encoding each to measure it would cost more than the write."""
    part: list[Document] = []
    size = 0
    for document in documents:
        length = DOCUMENT_BYTES + 4 * len(key(document))
        if part and size + length > COMMAND_BYTES:
            yield part
            part, size = [], 0
        part.append(document)
        size += length
    if part:
        yield part


def _job_mark(job: DispatchJob) -> str:
    """A job's mark: its id, after its event's, so that the marks' index grows in
    the order events are inserted where their ids do (ObjectIds begin with their
    second), rather than at a random place for every job (the id is a hash)."""
    return f"job:{job.event_id} {job.id}"


def _first(key: str, counted: set[str]) -> bool:
    """Whether ``key`` is counted for the first time; it is from now on."""
    if key in counted:
        return False
    counted.add(key)
    return True


def in_parts(
    events: list[EventKey], jobs: list[DispatchJob]
) -> list[tuple[list[EventKey], list[DispatchJob]]]:
    """The tally in parts of at most ``MARKS_PER_TRANSACTION`` marks, events and
    jobs together (a batch is one transaction); one empty part for an empty tally."""
    size, parts = MARKS_PER_TRANSACTION, []
    for start in range(0, max(len(events) + len(jobs), 1), size):
        end = start + size
        parts.append((events[start:end], jobs[max(start - len(events), 0) : max(end - len(events), 0)]))
    return parts
