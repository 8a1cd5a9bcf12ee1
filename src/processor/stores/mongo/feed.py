"""The events collection's change stream, and the catch-up from the collection when it lost its history.

Every event is read as the BSON bytes the server sent and decoded on its own,
so that one event pymongo cannot decode (a date beyond year 9999, invalid
UTF-8, as other drivers may write them) is dead-lettered alone instead of
failing its whole batch; and the server leaves out of the change event any
document over the size limit, so that no insert near 16 MB can make a change
event the server cannot send."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from bson import ObjectId, json_util
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import ASCENDING
from pymongo.change_stream import ChangeStream
from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure, PyMongoError
from pymongo.read_concern import ReadConcern

from processor.stores.base import (
    BATCH_BYTES,
    MAX_EVENT_BYTES,
    Batch,
    FeedEntry,
    StoreMisconfigured,
)
from processor.stores.mongo.checkpoint import Checkpoint
from processor.stores.mongo.documents import (
    EVENTS,
    RAW,
    STANDALONE,
    UNDECODABLE,
    Document,
    decode,
    decode_loosely,
    event_document,
    just_after,
    last_applied,
    order_of,
    unavailable_on_failure,
)

log = logging.getLogger(__name__)


def pipeline(max_event_bytes: int) -> list[Document]:
    """The spec's pipeline, plus what the feed needs: clusterTime orders events
    against subscription changes and is where a lost stream catches up from;
    operationType tells an invalidate; the document's size, and the document
    itself only when within the limit (the server measures it)."""
    size = {"$bsonSize": "$fullDocument"}
    return [
        {"$match": {"operationType": "insert"}},
        {
            "$project": {
                "_id": 1,
                "operationType": 1,
                "clusterTime": 1,
                "documentKey": 1,
                "size": size,
                "fullDocument": {"$cond": [{"$lte": [size, max_event_bytes]}, "$fullDocument", "$$REMOVE"]},
            }
        },
    ]


# ChangeStreamHistoryLost, ChangeStreamFatalError (token not found), InvalidResumeToken, CappedPositionLost
LOST_HISTORY = frozenset({286, 280, 260, 136})
CHANGE_STREAM_NOT_SUPPORTED = 40573  # a standalone server: the start's check missed it, or it changed since
# How far producers' ObjectId clocks may be off the server's, and how long before
# its insert an _id may be made (an outbox, a retry, a transaction up to 60 s):
# a catch-up reads this much either side of the window the server's times give.
CATCH_UP_SKEW = timedelta(seconds=120)
# The largest document a change event can carry: MongoDB sends no event over
# 16 MB, and the event adds its token, times and key to the document.
SENDABLE_BYTES = 16 * 1024 * 1024 - 16 * 1024
READ_AWAIT = 0.05  # seconds one read of the stream waits on the server: a quiet stream closes a batch
TIMESTAMP_TOKEN = "82"  # a resume token whose key string begins with a timestamp: the stream's position


def time_of_token(token: Mapping[str, Any] | None) -> Timestamp | None:
    """The cluster time a MongoDB resume token stands at, read from its key
    string (a timestamp type byte, then seconds and increment, big-endian);
    None for a token of another form."""
    data = (token or {}).get("_data")
    if not isinstance(data, str) or not data.startswith(TIMESTAMP_TOKEN) or len(data) < 18:
        return None
    try:
        return Timestamp(int(data[2:10], 16), int(data[10:18], 16))
    except ValueError:
        return None


class MongoFeed:
    def __init__(
        self,
        database: Database[Document],
        checkpoint: Checkpoint | None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_event_bytes: int = MAX_EVENT_BYTES,
        *,
        skew: timedelta = CATCH_UP_SKEW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # pymongo types the collection by the database's documents, whatever the codec says.
        self._events = cast(
            "Collection[RawBSONDocument]",
            database.get_collection(EVENTS, codec_options=RAW, read_concern=ReadConcern("majority")),
        )
        self._max_event_bytes = min(max_event_bytes, SENDABLE_BYTES)
        self._limit_named = (
            "FC_STREAM_MAX_EVENT_BYTES"
            if max_event_bytes <= SENDABLE_BYTES
            else "what a change event can carry within MongoDB's 16 MB"
        )
        self._pipeline = pipeline(self._max_event_bytes)
        self._database = database
        self._checkpoint = checkpoint
        self._recovered = False  # a recovery from lost history ended since the last batch handed out
        self._now = now
        self._clock = clock
        self._skew = skew
        self._stream: ChangeStream[RawBSONDocument] | None = None
        self._catch_up: Iterator[RawBSONDocument] | None = None
        self._session: ClientSession | None = None  # the catch-up's, while it lasts
        self._catch_up_from: Document = {}  # the bound of _id after what was handed out
        self._catch_up_until: ObjectId | None = None
        self._warned_unrecoverable = False
        # The cluster time of the last event the stream handed out: subscriptions
        # are read at least that far (a catch-up's times are producers' clocks).
        self.streamed_through: Timestamp | None = None

    # -- the change stream -------------------------------------------------

    def next_batch(self, max_events: int, max_wait: float, max_bytes: int = BATCH_BYTES) -> Batch:
        batch = self._next_batch(max_events, max_wait, max_bytes)
        if self._recovered:
            self._recovered = False
            batch = replace(batch, history_lost=True)
        return batch

    def _next_batch(self, max_events: int, max_wait: float, max_bytes: int) -> Batch:
        options: Document = {
            "batch_size": max_events,
            "max_await_time_ms": max(1, int(min(max_wait, READ_AWAIT) * 1000)),
        }
        with unavailable_on_failure("change stream"):
            try:
                if self._stream is None or not self._stream.alive:
                    self._open(options)
                if self._catch_up is None:
                    return self._stream_batch(max_events, max_wait, max_bytes)
            except OperationFailure as error:
                if error.code == CHANGE_STREAM_NOT_SUPPORTED:
                    raise StoreMisconfigured(STANDALONE) from error
                # The server reports a token that left the oplog on the first read.
                if error.code not in LOST_HISTORY:
                    raise
                self._recover_lost_history(error, options)
            if self._catch_up is not None:
                return self._catch_up_batch(max_events, max_bytes)
            return self._stream_batch(max_events, max_wait, max_bytes)

    def _open(self, options: Document) -> None:
        """Resume after the saved token, or (first start) begin at the current point,
        keeping its cluster time: even a first batch without events saves a position.
        ``start_after`` rather than ``resume_after``: it also continues past an
        invalidate (the collection dropped or renamed), which the other refuses."""
        self._close_stream()
        token = self._checkpoint.resume_token if self._checkpoint else None
        if token is None:
            # The stream takes changes at its start time too: the last write the
            # server knew of, which (an event inserted before the start) is past.
            start = just_after(last_applied(self._database))
            self._stream = self._events.watch(self._pipeline, start_at_operation_time=start, **options)
            self._checkpoint = Checkpoint(None, start)
            return
        self._stream = self._events.watch(self._pipeline, start_after=token, **options)

    def _recover_lost_history(self, error: OperationFailure, options: Document) -> None:
        self.close()  # a catch-up under way too: this one starts from the saved position again
        since = self._checkpoint.cluster_time if self._checkpoint else None
        # One causally consistent session for the start's time and the catch-up's
        # reads: a majority read of the collection then waits for the majority
        # point to pass that time, so no write before the new stream's start is
        # missing from both (the last applied write can be ahead of the majority).
        self._session = self._database.client.start_session(causal_consistency=True)
        start = last_applied(self._database, self._session)
        # Before the new stream: once it is open, nothing may fail until the catch-up
        # is set, or a retried read would follow the stream as if caught up.
        undated = since is not None and self._events.count_documents(
            {"_id": {"$not": {"$type": "objectId"}}}, limit=1, session=self._session
        )
        # The new stream first: whatever is inserted from here on, it sees.
        self._stream = self._events.watch(self._pipeline, start_at_operation_time=start, **options)
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
            self._recovered = True
            return
        low = since.as_datetime() - self._skew
        # ObjectId times are whole seconds: the bound is the first id of the next second.
        high = start.as_datetime() + self._skew + timedelta(seconds=1)
        log.warning(
            "the stored resume token is no longer in the oplog (%s): catching up from the events "
            "collection, events whose ObjectId _id dates them from %s to before %s, then following "
            "the stream",
            error,
            low.isoformat(),
            high.isoformat(),
        )
        if undated:
            log.error(
                "the events collection holds events whose _id is not an ObjectId: the catch-up cannot "
                "date them, and those inserted while the stream's history was lost are not recovered"
            )
        self._catch_up_from = {"$gte": ObjectId.from_datetime(low)}
        self._catch_up_until = ObjectId.from_datetime(high)
        self._catch_up = self._catch_up_query()

    def _catch_up_query(self) -> Iterator[RawBSONDocument]:
        return self._events.find(
            {"_id": {**self._catch_up_from, "$lt": self._catch_up_until}},
            sort=[("_id", ASCENDING)],
            batch_size=1000,
            session=self._session,
        )

    def _stream_batch(self, max_events: int, max_wait: float, max_bytes: int) -> Batch:
        """What the stream has, up to the limits: closed at the first quiet read
        once it holds an event, and no read begun ``max_wait`` after its first
        event (the read in progress then may wait ``READ_AWAIT`` more). The
        driver holds a getMore's documents already (MongoDB bounds that reply),
        so the byte budget is counted on the documents read and closes the batch once spent."""
        assert self._stream is not None
        entries: list[FeedEntry] = []
        cluster_time = self._checkpoint.cluster_time if self._checkpoint else None
        spent = 0
        waits_until = self._clock() + max_wait  # for a first event
        closes_at: float | None = None
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
                if entries or not self._stream.alive or self._clock() >= waits_until:
                    break
                continue
            if change.get("operationType") == "invalidate":
                # events was dropped or renamed: the server closed the stream, and
                # the next read starts after this change, on the collection of the name.
                log.warning("the events collection was dropped or renamed: following the new one")
                break
            cluster_time = change.get("clusterTime", cluster_time)
            self.streamed_through = cluster_time
            entry, size = self._entry(
                change.get("fullDocument"),
                change.get("size") or 0,
                change.get("documentKey"),
                cluster_time,
                str(change["_id"]["_data"]),
            )
            entries.append(entry)
            spent += size
            if closes_at is None:
                closes_at = self._clock() + max_wait
            elif self._clock() >= closes_at:
                break
        token = self._stream.resume_token
        # An idle stream's token moves on with the server's time: so does its position.
        cluster_time = max(filter(None, (cluster_time, time_of_token(token))), default=None)
        self._checkpoint = Checkpoint(None if token is None else dict(token), cluster_time)
        more = len(entries) == max_events or spent >= max_bytes or (closes_at is not None and bool(entries))
        return Batch(entries, self._checkpoint.dumps(), more=more and self._stream.alive)

    def _catch_up_batch(self, max_events: int, max_bytes: int) -> Batch:
        assert self._catch_up is not None
        entries = []
        checkpoint = self._checkpoint
        last = None
        spent = 0
        try:
            for document in self._catch_up:
                last = _identifier(document)
                moment = Timestamp(last.generation_time, 0)
                entry = self.entry(document, moment, f"catch-up {last}")
                entries.append(entry)
                spent += len(document.raw)
                if checkpoint is not None:  # keep the old token: a crash now must catch up again
                    checkpoint = Checkpoint(checkpoint.resume_token, moment)
                if len(entries) == max_events or spent >= max_bytes:
                    break
            else:
                self._catch_up = None
                self._end_session()
                self._recovered = True
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

    def entry(self, document: RawBSONDocument, moment: Timestamp | None, position: str) -> FeedEntry:
        """A document read from the collection, as the feed hands it out."""
        return self._entry(document, len(document.raw), document, moment, position)[0]

    def _entry(
        self,
        stored: RawBSONDocument | None,
        size: int,
        key: RawBSONDocument | None,
        cluster_time: Timestamp | None,
        position: str,
    ) -> tuple[FeedEntry, int]:
        """The entry of a stored document (None: the server left it out, over the
        size limit), and its size in BSON bytes."""
        received_at = cluster_time.as_datetime() if cluster_time else self._now()
        problem: str | None = None
        converted: Document | None = None
        document: Document | None = None
        if stored is None or size > self._max_event_bytes:
            problem = (
                f"document: is {size} bytes as BSON, over the limit of {self._max_event_bytes} "
                f"({self._limit_named})"
            )
        else:
            try:
                document = decode(stored)
            except UNDECODABLE as error:
                problem = f"document: cannot be decoded as BSON ({error})"
        if document is not None:
            try:
                converted = event_document(document)
            except (TypeError, ValueError) as error:
                problem = f"document: cannot be read as JSON ({error})"
        shown = stored if stored is not None and size <= self._max_event_bytes else key

        def raw() -> tuple[str]:  # only a dead letter needs it
            readable = document if document is not None else decode_loosely(shown)
            return (json_util.dumps(readable, json_options=json_util.CANONICAL_JSON_OPTIONS),)

        identifier = document.get("_id") if document is not None else decode_loosely(shown).get("_id")
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
        self._close_stream()
        self._end_session()

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _end_session(self) -> None:
        if self._session is not None:
            self._session.end_session()
            self._session = None


def _identifier(raw: RawBSONDocument) -> Any:
    """A stored document's ``_id``: read from its top level alone (its fields
    nested stay bytes), and loosely only when that level cannot be decoded."""
    try:
        return raw["_id"]
    except UNDECODABLE:
        return decode_loosely(raw)["_id"]
