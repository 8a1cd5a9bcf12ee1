"""The events collection's change stream, and the catch-up from the collection when it lost its history."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import bson
from bson import ObjectId, json_util
from bson.timestamp import Timestamp
from pymongo import ASCENDING
from pymongo.change_stream import ChangeStream
from pymongo.database import Database
from pymongo.errors import OperationFailure, PyMongoError
from pymongo.read_concern import ReadConcern

from processor.stores.base import (
    BATCH_BYTES,
    MAX_EVENT_BYTES,
    Batch,
    FeedEntry,
    StoreUnavailable,
)
from processor.stores.mongo.checkpoint import Checkpoint
from processor.stores.mongo.documents import (
    EVENTS,
    Document,
    event_document,
    order_of,
    unavailable_on_failure,
)

log = logging.getLogger(__name__)


# The spec's pipeline; clusterTime is kept too: it orders events against
# subscription changes and is the position a lost stream catches up from.
PIPELINE: list[Document] = [
    {"$match": {"operationType": "insert"}},
    {"$project": {"fullDocument": 1, "_id": 1, "clusterTime": 1}},
]
# ChangeStreamHistoryLost, ChangeStreamFatalError (token not found), InvalidResumeToken, CappedPositionLost
LOST_HISTORY = frozenset({286, 280, 260, 136})
CATCH_UP_MARGIN = timedelta(seconds=5)  # ObjectId times are seconds, and clients' clocks drift


class MongoFeed:
    def __init__(
        self,
        database: Database[Document],
        checkpoint: Checkpoint | None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self._events = database.get_collection(EVENTS, read_concern=ReadConcern("majority"))
        self._max_event_bytes = max_event_bytes
        self._database = database
        self._checkpoint = checkpoint
        self._history_lost = False  # since the last batch handed out
        self._now = now
        self._stream: ChangeStream[Document] | None = None
        self._catch_up: Iterator[Document] | None = None
        self._catch_up_from: Document = {}  # the bound of _id after what was handed out
        self._catch_up_until: ObjectId | None = None
        self._warned_unrecoverable = False

    # -- the change stream -------------------------------------------------

    def next_batch(self, max_events: int, max_wait: float, max_bytes: int = BATCH_BYTES) -> Batch:
        batch = self._next_batch(max_events, max_wait, max_bytes)
        if self._history_lost:
            self._history_lost = False
            batch = replace(batch, history_lost=True)
        return batch

    def _next_batch(self, max_events: int, max_wait: float, max_bytes: int) -> Batch:
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
            # The stream takes changes at its start time too: the last write the
            # server knew of, which (an event inserted before the start) is past.
            now = self._cluster_time()
            start = Timestamp(now.time, now.inc + 1) if now.inc < 0xFFFFFFFF else Timestamp(now.time + 1, 0)
            self._stream = self._events.watch(PIPELINE, start_at_operation_time=start, **options)
            self._checkpoint = Checkpoint(None, start)
            return
        self._stream = self._events.watch(PIPELINE, resume_after=token, **options)

    def _recover_lost_history(self, error: OperationFailure, options: Document) -> None:
        self._history_lost = True
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
