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

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
from bson import ObjectId, json_util
from bson.timestamp import Timestamp
from pymongo import ASCENDING, InsertOne, UpdateOne
from pymongo.change_stream import ChangeStream
from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError
from pymongo.read_concern import ReadConcern

from processor.jobs import job_id
from processor.metrics import Metrics
from processor.models import DeadLetter, DispatchJob, Event, FilterFailure
from processor.projections import ProjectionDelta, event_key
from processor.resume import TokenStore
from processor.store import (
    BATCH_BYTES,
    MAX_EVENT_BYTES,
    Batch,
    CommitReport,
    FeedEntry,
    Fenced,
    ProcessedBatch,
    StoreUnavailable,
    SubscriptionChange,
)

log = logging.getLogger(__name__)
Document = dict[str, Any]

EVENTS = "events"
SUBSCRIPTIONS = "subscriptions"
JOBS = "dispatch_jobs"
DEAD_LETTERS = "dead_letters"
FILTER_FAILURES = "filter_failures"
EVENT_TYPE_COUNTS = "event_type_counts"
SUBSCRIPTION_STATS = "subscription_stats"
CLIENT_ACTIVITY = "client_activity"
PROJECTION_MARKS = "projection_marks"
CHECKPOINTS = "stream_checkpoints"  # the durable position: one document per resume key
IDLE_CHECKPOINT_SECONDS = 10.0  # how often an idle stream's moving token is written to the checkpoint

# The spec's pipeline; clusterTime is kept too: it orders events against
# subscription changes and is the position a lost stream catches up from.
PIPELINE: list[Document] = [
    {"$match": {"operationType": "insert"}},
    {"$project": {"fullDocument": 1, "_id": 1, "clusterTime": 1}},
]
DUPLICATE_KEY = 11000
# ChangeStreamHistoryLost, ChangeStreamFatalError (token not found), InvalidResumeToken, CappedPositionLost
LOST_HISTORY = frozenset({286, 280, 260, 136})
CATCH_UP_MARGIN = timedelta(seconds=5)  # ObjectId times are seconds, and clients' clocks drift
JSON = json_util.JSONOptions(json_mode=json_util.JSONMode.RELAXED, tz_aware=True)


def order_of(cluster_time: Timestamp) -> int:
    """A cluster time as one integer that sorts like it."""
    return (cluster_time.time << 32) | cluster_time.inc


def jsonable(value: Any) -> Any:
    """BSON values (ObjectId, dates, decimals...) as the JSON the contract speaks:
    MongoDB's relaxed Extended JSON, by the driver's own converter."""
    return json.loads(json_util.dumps(value, json_options=JSON))


@contextmanager
def unavailable_on_failure(what: str) -> Iterator[None]:
    """Driver errors become ``StoreUnavailable``, which the loop retries with backoff."""
    try:
        yield
    except PyMongoError as error:
        raise StoreUnavailable(f"{what}: {error}") from error


@dataclass(frozen=True)
class Checkpoint:
    """What is saved after each batch: the stream's resume token, and the cluster
    time of the last processed event (where a lost stream catches up from)."""

    resume_token: Document | None
    cluster_time: Timestamp | None

    def dumps(self) -> str:
        return json_util.dumps(
            {"resume_token": self.resume_token, "cluster_time": self.cluster_time},
            json_options=json_util.CANONICAL_JSON_OPTIONS,
        )

    @classmethod
    def loads(cls, text: str | None) -> Checkpoint | None:
        if text is None:
            return None
        saved = json_util.loads(text)
        return cls(saved.get("resume_token"), saved.get("cluster_time"))


def newer(durable: str | None, mirror: str | None) -> str | None:
    """Of two saved checkpoints, the one of the later event; the durable one
    when they are as late (it is written first)."""
    if durable is None or mirror is None:
        return durable or mirror
    # A checkpoint without a cluster time (a first start's, before any event)
    # is the oldest: the mirror is written after the durable one, never before.

    def moment(text: str) -> Timestamp:
        checkpoint = Checkpoint.loads(text)
        return (checkpoint.cluster_time if checkpoint else None) or Timestamp(0, 0)

    return mirror if moment(mirror) > moment(durable) else durable


def event_document(change_or_document: Document) -> Document:
    """A stored event as the contract expects it: ``_id`` of any BSON type becomes
    the string ``id``, other BSON values become JSON."""
    document = dict(change_or_document)
    identifier = document.pop("_id", None)
    document.setdefault("id", str(identifier) if identifier is not None else None)
    time = document.pop("time", None)
    converted: Document = jsonable(document)
    if time is not None:
        converted["time"] = time  # a date stays a date; anything else is for validation to judge
    return converted


class MongoFeed:
    def __init__(
        self,
        database: Database[Document],
        checkpoint: Checkpoint | None,
        metrics: Metrics,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self._events = database.get_collection(EVENTS, read_concern=ReadConcern("majority"))
        self._max_event_bytes = max_event_bytes
        self._database = database
        self._checkpoint = checkpoint
        self._metrics = metrics
        self._now = now
        self._stream: ChangeStream[Document] | None = None
        self._catch_up: Iterator[Document] | None = None
        self._catch_up_from: Document = {}  # the bound of _id after what was handed out
        self._catch_up_until: ObjectId | None = None
        self._warned_unrecoverable = False

    # -- the change stream -------------------------------------------------

    def next_batch(self, max_events: int, max_wait: float, max_bytes: int = BATCH_BYTES) -> Batch:
        options: Document = {"batch_size": max_events, "max_await_time_ms": max(1, int(max_wait * 1000))}
        with unavailable_on_failure("change stream"):
            try:
                if self._stream is None or not self._stream.alive:
                    self._open(options)
                if self._catch_up is None:
                    return self._stream_batch(max_events, max_bytes)
            except OperationFailure as error:
                # The server reports a token that left the oplog on the first read.
                if error.code not in LOST_HISTORY:
                    raise
                self._recover_lost_history(error, options)
            if self._catch_up is not None:
                return self._catch_up_batch(max_events, max_bytes)
            return self._stream_batch(max_events, max_bytes)

    def _open(self, options: Document) -> None:
        """Resume after the saved token, or (first start) begin at the current point,
        keeping its cluster time: even a first batch without events saves a position."""
        self.close()
        token = self._checkpoint.resume_token if self._checkpoint else None
        if token is None:
            start = self._cluster_time()
            self._stream = self._events.watch(PIPELINE, start_at_operation_time=start, **options)
            self._checkpoint = Checkpoint(None, start)
            return
        self._stream = self._events.watch(PIPELINE, resume_after=token, **options)

    def _recover_lost_history(self, error: OperationFailure, options: Document) -> None:
        self._metrics.lost_history.inc()
        self.close()
        since = self._checkpoint.cluster_time if self._checkpoint else None
        start = self._cluster_time()
        # The new stream first: whatever is inserted from here on, it sees.
        self._stream = self._events.watch(PIPELINE, start_at_operation_time=start, **options)
        if since is None:
            if not self._warned_unrecoverable:
                log.error(
                    "the stored resume token is no longer in the oplog (%s) and no position was kept "
                    "with it: events inserted while the processor was away cannot be recovered; "
                    "starting from the current point",
                    error,
                )
                self._warned_unrecoverable = True
            self._checkpoint = Checkpoint(None, None)
            return
        low = since.as_datetime() - CATCH_UP_MARGIN
        high = start.as_datetime() + CATCH_UP_MARGIN
        log.warning(
            "the stored resume token is no longer in the oplog (%s): catching up from the events "
            "collection, events whose ObjectId _id dates them between %s and %s, then following "
            "the stream (events with other _ids cannot be dated, and are not caught up)",
            error,
            low.isoformat(),
            high.isoformat(),
        )
        self._catch_up_from = {"$gte": ObjectId.from_datetime(low)}
        self._catch_up_until = ObjectId.from_datetime(high)
        self._catch_up = self._catch_up_query()

    def _catch_up_query(self) -> Iterator[Document]:
        return self._events.find(
            {"_id": {**self._catch_up_from, "$lte": self._catch_up_until}},
            sort=[("_id", ASCENDING)],
            batch_size=1000,
        )

    def _cluster_time(self) -> Timestamp:
        reply = self._database.client.admin.command("ping")
        operation_time = reply.get("operationTime")
        if not isinstance(operation_time, Timestamp):
            raise StoreUnavailable("the server reported no operation time: is this a replica set?")
        return operation_time

    def _stream_batch(self, max_events: int, max_bytes: int) -> Batch:
        """What the stream has, up to the limits: the driver holds a getMore's
        documents already (MongoDB bounds that reply), so the byte budget is
        counted on the documents read and closes the batch once spent."""
        assert self._stream is not None
        entries: list[FeedEntry] = []
        cluster_time = self._checkpoint.cluster_time if self._checkpoint else None
        spent = 0
        while len(entries) < max_events and spent < max_bytes:
            try:
                change = self._stream.try_next()
            except PyMongoError:
                if not entries:
                    raise
                # The stream has moved past what it returned: hand that out, and
                # meet the error again at the next read.
                break
            if change is None:
                break
            cluster_time = change.get("clusterTime", cluster_time)
            entry, size = self._entry(change["fullDocument"], cluster_time, str(change["_id"]["_data"]))
            entries.append(entry)
            spent += size
        token = self._stream.resume_token
        self._checkpoint = Checkpoint(None if token is None else dict(token), cluster_time)
        return Batch(entries, self._checkpoint.dumps(), more=len(entries) == max_events or spent >= max_bytes)

    def _catch_up_batch(self, max_events: int, max_bytes: int) -> Batch:
        assert self._catch_up is not None
        entries = []
        checkpoint = self._checkpoint
        last = None
        spent = 0
        try:
            for document in self._catch_up:
                identifier = last = document["_id"]
                moment = identifier.generation_time
                entry, size = self._entry(document, Timestamp(moment, 0), f"catch-up {identifier}")
                entries.append(entry)
                spent += size
                if checkpoint is not None:  # keep the old token: a crash now must catch up again
                    checkpoint = Checkpoint(checkpoint.resume_token, Timestamp(moment, 0))
                if len(entries) == max_events or spent >= max_bytes:
                    break
            else:
                self._catch_up = None
                log.warning("caught up after lost history: following the change stream")
        except PyMongoError:
            # A cursor that failed is dead and would look exhausted: query again,
            # after the last event handed out.
            self._catch_up = self._catch_up_query()
            raise
        if last is not None:
            self._catch_up_from = {"$gt": last}
        self._checkpoint = checkpoint
        more = self._catch_up is not None or len(entries) == max_events
        return Batch(entries, None if checkpoint is None else checkpoint.dumps(), more)

    def _entry(
        self, document: Document, cluster_time: Timestamp | None, position: str
    ) -> tuple[FeedEntry, int]:
        """The entry of a stored document, and its size in BSON bytes."""
        received_at = cluster_time.as_datetime() if cluster_time else self._now()
        identifier = document.get("_id")

        def raw() -> tuple[str]:  # only a dead letter needs it
            return (json_util.dumps(document, json_options=json_util.CANONICAL_JSON_OPTIONS),)

        try:
            size = len(bson.encode(document))
        except (bson.errors.InvalidDocument, TypeError, ValueError, OverflowError):
            size = len(raw()[0])  # a document pymongo cannot encode again: judged by its text
        converted: Document | None = None
        if size > self._max_event_bytes:
            problem: str | None = (
                f"document: is {size} bytes as BSON, over the limit of {self._max_event_bytes} "
                "(FC_STREAM_MAX_EVENT_BYTES)"
            )
        else:
            try:
                converted, problem = event_document(document), None
            except (TypeError, ValueError) as error:
                problem = f"document: cannot be read as JSON ({error})"
        entry = FeedEntry(
            order=order_of(cluster_time) if cluster_time else 0,
            position=position,
            event_id=None if identifier is None else str(identifier),
            document=converted,
            raw=raw,
            received_at=received_at,
            problem=problem,
        )
        return entry, size

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


class MongoSubscriptions:
    """Subscriptions loaded once, then kept current by their own change stream."""

    def __init__(self, database: Database[Document]) -> None:
        self._collection = database.get_collection(SUBSCRIPTIONS, read_concern=ReadConcern("majority"))
        self._stream: ChangeStream[Document] | None = None
        self._known: set[str] = set()  # handed out (or about to be) and not deleted since
        self._read: list[SubscriptionChange] = []  # read, not handed out yet: kept across a failure

    def changes(self) -> list[SubscriptionChange]:
        with unavailable_on_failure("subscriptions"):
            if self._stream is None or not self._stream.alive:
                self._reload()
            else:
                self._drain()
        changes, self._read = self._read, []
        return changes

    def _add(self, change: SubscriptionChange) -> None:
        if change.document is None:
            self._known.discard(change.subscription_id)
        else:
            self._known.add(change.subscription_id)
        self._read.append(change)

    def _reload(self) -> None:
        """Watch first, then read everything: no change can fall between the two.
        What is gone since the last load (a drop, lost history) is reported deleted."""
        self.close()
        stream = self._collection.watch(full_document="updateLookup", max_await_time_ms=1)
        try:
            current = [
                SubscriptionChange(_subscription_id(d), _subscription_document(d), -1)
                for d in self._collection.find()
            ]
        except BaseException:
            stream.close()  # kept, it would be drained next time and the load never done
            raise
        self._stream = stream
        self._read = []  # superseded by the load
        for gone in sorted(self._known - {c.subscription_id for c in current}):
            self._add(SubscriptionChange(gone, None, -1))
        for change in current:
            self._add(change)
        self._drain()

    def _drain(self) -> None:
        """Every change committed so far: the stream reads up to the majority commit
        point, which is past every event already read."""
        assert self._stream is not None
        try:
            while (change := self._stream.try_next()) is not None:
                operation = change["operationType"]
                if operation in ("drop", "rename", "dropDatabase", "invalidate"):
                    self._reload()
                    return
                document = change.get("fullDocument")
                key = change["documentKey"]["_id"]
                self._add(
                    SubscriptionChange(
                        str(key),
                        None
                        if operation == "delete" or document is None
                        else _subscription_document(document),
                        order_of(change["clusterTime"]),
                    )
                )
        except OperationFailure as error:
            if error.code not in LOST_HISTORY:
                raise
            log.warning("the subscriptions stream lost its history (%s): reloading them all", error)
            self._reload()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def _subscription_id(document: Document) -> str:
    return str(document.get("_id"))


def _subscription_document(document: Document) -> Document:
    converted: Document = jsonable({k: v for k, v in document.items() if k != "_id"})
    converted["id"] = _subscription_id(document)
    return converted


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
        metrics: Metrics,
        max_event_bytes: int = MAX_EVENT_BYTES,
        checkpoint_key: str = "stream-processor",
    ) -> None:
        self.database = database
        self._max_event_bytes = max_event_bytes
        self._tokens = tokens
        self._metrics = metrics
        self._subscriptions = MongoSubscriptions(database)
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
        self._subscriptions.close()  # a new feed starts from a fresh load of the subscriptions
        self._inserted_before_failure.clear()
        return MongoFeed(
            self.database,
            Checkpoint.loads(resume_after),
            self._metrics,
            max_event_bytes=self._max_event_bytes,
        )

    def subscription_changes(self) -> list[SubscriptionChange]:
        return self._subscriptions.changes()

    def fence(self, epoch: int, holder: str) -> None:
        self._epoch, self._holder = epoch, holder  # what the claim checks, and writes
        with unavailable_on_failure("claim the checkpoint"), self.database.client.start_session() as session:
            session.with_transaction(lambda s: self._save_checkpoint(s, None))
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
            created = self._insert_jobs(batch.jobs)
            self._insert_dead_letters(batch.dead_letters)
            self._insert_filter_failures(batch.filter_failures)
            self._project(batch.events, batch.jobs, batch.resume_token)
        if batch.resume_token is not None:
            self._mirror(batch.resume_token)
        self._inserted_before_failure.clear()
        return CommitReport(jobs_created=created, duplicates=len(batch.jobs) - created)

    def _mirror(self, token: str) -> None:
        """The token store's copy: the durable checkpoint is written already, so
        a Redis that cannot be reached holds nothing back (a newer leader does)."""
        try:
            self._tokens.save(token)
        except StoreUnavailable as error:
            log.warning("the resume token's mirror was not saved (%s); the store's checkpoint was", error)

    def _insert_jobs(self, jobs: Sequence[DispatchJob]) -> int:
        """Insert every job; one that exists already is done. Returns how many were new,
        counting those a failed attempt at this same batch inserted."""
        if not jobs:
            return 0
        try:
            inserted = len(
                self._jobs.insert_many([job_document(j) for j in jobs], ordered=False).inserted_ids
            )
            return inserted + len(self._inserted_before_failure)
        except BulkWriteError as error:
            errors = error.details.get("writeErrors", [])
            failed = {e.get("index") for e in errors}
            fresh = {job.id for n, job in enumerate(jobs) if n not in failed}
            others = [e for e in errors if e.get("code") != DUPLICATE_KEY]
            if others:  # retried as a whole: what this attempt inserted will be a duplicate then
                self._inserted_before_failure |= fresh
                raise StoreUnavailable(f"inserting jobs: {others[0].get('errmsg')}") from error
            earlier = {jobs[n].id for n in failed} & self._inserted_before_failure
            return len(fresh) + len(earlier)

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

    def _insert_filter_failures(self, failures: Sequence[FilterFailure]) -> None:
        if not failures:
            return
        self.database[FILTER_FAILURES].bulk_write(
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

    def _project(self, events: Sequence[Event], jobs: Sequence[DispatchJob], token: str | None) -> None:
        """Count each event and each job once, ever, and save the checkpoint: in one
        transaction, check the claim, mark what is counted and count what was not
        marked yet."""
        marks = self.database[PROJECTION_MARKS]
        keys = [f"event:{e.id}" for e in events] + [f"job:{j.id}" for j in jobs]
        if not keys and (token is None or time.monotonic() - self._saved_at < IDLE_CHECKPOINT_SECONDS):
            # An empty batch's position loses nothing by waiting; and saving it
            # writes to the oplog, which moves the idle stream's token again.
            return

        def project(session: ClientSession) -> None:
            self._save_checkpoint(session, token)  # first: refused, it writes nothing
            if not keys:
                return
            seen = {d["_id"] for d in marks.find({"_id": {"$in": keys}}, {"_id": 1}, session=session)}
            delta = ProjectionDelta.of(
                (event_key(e) for e in events if f"event:{e.id}" not in seen),
                (j for j in jobs if f"job:{j.id}" not in seen),
            )
            now = datetime.now(UTC)
            new = [InsertOne({"_id": key, "at": now}) for key in keys if key not in seen]
            if new:
                marks.bulk_write(new, ordered=False, session=session)
            self._apply(delta, session)

        with self.database.client.start_session() as session:
            session.with_transaction(project)
        if token is not None:
            self._saved_at = time.monotonic()

    def _apply(self, delta: ProjectionDelta, session: ClientSession) -> None:
        for name, writes in (
            (
                EVENT_TYPE_COUNTS,
                [
                    UpdateOne({"_id": t}, {"$inc": {"count": n}}, upsert=True)
                    for t, n in delta.event_types.items()
                ],
            ),
            (
                SUBSCRIPTION_STATS,
                [
                    UpdateOne(
                        {"_id": key},
                        {"$inc": {"jobs_created": jobs}, "$max": {"last_matched_at": last}},
                        upsert=True,
                    )
                    for key, jobs, last in delta.subscription_rows()
                ],
            ),
            (
                CLIENT_ACTIVITY,
                [
                    UpdateOne(
                        {"_id": key},
                        {"$inc": {"events": events, "jobs": jobs}}
                        | ({"$max": {"last_event_time": last}} if last else {}),
                        upsert=True,
                    )
                    for key, events, jobs, last in delta.client_rows()
                ],
            ),
        ):
            if writes:
                self.database[name].bulk_write(writes, ordered=False, session=session)

    def close(self) -> None:
        self._subscriptions.close()


def job_document(job: DispatchJob) -> Document:
    """The job's fields, its ``id`` as the document's ``_id``."""
    return {"_id" if name == "id" else name: value for name, value in asdict(job).items()}


def dead_letter_document(letter: DeadLetter) -> Document:
    return {
        "event_id": letter.event_id,
        "position": letter.position,
        "reason": letter.reason,
        "raw": letter.raw,
        "raw_bytes": letter.raw_bytes,
        "raw_sha256": letter.raw_sha256,
        "received_at": letter.received_at,
        "created_at": datetime.now(UTC),
    }
