"""The MongoDB store's side of the operator tools (``Repairs``).

Reads are majority reads of the collections as they stand; jobs are written as
a commit writes them (a duplicate key is a job that exists), and what a repair
creates is counted in the projections under the same marks as the loop's
counts, in transactions that neither read nor write the checkpoint: a live
processor's position and fencing are untouched.

Events are read in ``_id`` order, and from a time by their ObjectId's time, as
the catch-up after lost history reads them: an event whose ``_id`` is not an
ObjectId is read only by a backfill from the start.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import Any, cast

from bson import ObjectId, json_util
from bson.errors import InvalidId
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.read_concern import ReadConcern

from processor.models import DeadLetter, FilterFailure
from processor.stores.base import (
    MAX_EVENT_BYTES,
    CommitReport,
    FeedEntry,
    Repair,
    StoredFailure,
    StoredLetter,
    SubscriptionChange,
)
from processor.stores.mongo.documents import (
    DEAD_LETTERS,
    EVENTS,
    FILTER_FAILURES,
    JOBS,
    RAW,
    SUBSCRIPTIONS,
    Document,
    unavailable_on_failure,
)
from processor.stores.mongo.feed import MongoFeed
from processor.stores.mongo.store import (
    count_marked,
    in_parts,
    in_transaction,
    insert_filter_failures,
    insert_jobs,
)
from processor.stores.mongo.subscriptions import stored_subscription

MAJORITY = ReadConcern("majority")
NEVER = datetime(1970, 1, 1, tzinfo=UTC)  # what a letter or failure without a time says
# An ObjectId holds its time in 32 unsigned bits of seconds: a time before them
# is before every event, and one after them after every event.
OBJECT_ID_EPOCH = NEVER
LAST_OBJECT_ID_TIME = datetime.fromtimestamp(2**32 - 1, UTC)


def position(identifier: object) -> str:
    """An ``_id`` as a cursor: an ObjectId as its hex, anything else as Extended JSON."""
    return str(identifier) if isinstance(identifier, ObjectId) else json_util.dumps(identifier)


def identifier(cursor: str) -> object:
    """``position`` undone; ``ValueError`` for text it did not make."""
    if len(cursor) == 24:
        try:
            return ObjectId(cursor)
        except InvalidId:
            pass
    try:
        return json_util.loads(cursor)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{cursor!r} is not a position of the MongoDB store: {error}") from None


class MongoRepairs:
    def __init__(self, database: Database[Document], max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.database = database
        self._events = cast(
            "Collection[RawBSONDocument]",
            database.get_collection(EVENTS, codec_options=RAW, read_concern=MAJORITY),
        )
        self._reader = MongoFeed(database, None, max_event_bytes=max_event_bytes)  # never opened: it decodes
        self._inserted_before_failure: set[str] = set()

    def current_subscriptions(self) -> list[SubscriptionChange]:
        collection = cast(
            "Collection[RawBSONDocument]",
            self.database.get_collection(SUBSCRIPTIONS, codec_options=RAW, read_concern=MAJORITY),
        )
        with unavailable_on_failure("read the subscriptions"):
            return [stored_subscription(raw) for raw in collection.find(sort=[("_id", ASCENDING)])]

    def _entry(self, document: RawBSONDocument) -> FeedEntry:
        key = document["_id"]
        moment = Timestamp(key.generation_time, 0) if isinstance(key, ObjectId) else None
        return self._reader.entry(document, moment, position(key))

    def event(self, event_id: str) -> FeedEntry | None:
        candidates: list[object] = [event_id]
        if ObjectId.is_valid(event_id):
            candidates.insert(0, ObjectId(event_id))
        with unavailable_on_failure("read an event"):
            found = self._events.find_one({"_id": {"$in": candidates}})
        return None if found is None else self._entry(found)

    def events(self, after: str | None, since: datetime | None, limit: int) -> list[FeedEntry]:
        query: Document = {}
        if after is not None:
            query["_id"] = {"$gt": identifier(after)}
        elif since is not None and since >= OBJECT_ID_EPOCH:
            if since > LAST_OBJECT_ID_TIME:
                return []  # no ObjectId is that late
            query["_id"] = {"$gte": ObjectId.from_datetime(since)}
        with unavailable_on_failure("read events"):
            found = list(self._events.find(query, sort=[("_id", ASCENDING)], limit=limit))
        return [self._entry(document) for document in found]

    def letter_event(self, letter: DeadLetter) -> FeedEntry | None:
        return None if letter.event_id is None else self.event(letter.event_id)

    def _page(self, name: str, after: str | None, limit: int, **wanted: str | None) -> list[Document]:
        query: Document = {field: value for field, value in wanted.items() if value is not None}
        if after is not None:
            query["_id"] = {"$gt": after}
        with unavailable_on_failure(f"read {name}"):
            return list(self.database[name].find(query, sort=[("_id", ASCENDING)], limit=limit))

    def dead_letters(self, after: str | None, limit: int, event_id: str | None = None) -> list[StoredLetter]:
        return [
            StoredLetter(
                str(d["_id"]),
                DeadLetter(
                    str(d.get("position", "")),
                    _text(d.get("event_id")),
                    str(d.get("reason", "")),
                    str(d.get("raw", "")),
                    _time(d.get("received_at")),
                    int(d.get("raw_bytes") or 0),
                    str(d.get("raw_sha256") or ""),
                ),
            )
            for d in self._page(DEAD_LETTERS, after, limit, event_id=event_id)
        ]

    def filter_failures(
        self,
        after: str | None,
        limit: int,
        *,
        event_id: str | None = None,
        subscription_id: str | None = None,
    ) -> list[StoredFailure]:
        return [
            StoredFailure(
                str(d["_id"]),
                FilterFailure(
                    str(d.get("event_id")),
                    str(d.get("subscription_id")),
                    str(d.get("client_id")),
                    str(d.get("reason", "")),
                    _time(d.get("failed_at")),
                ),
            )
            for d in self._page(
                FILTER_FAILURES, after, limit, event_id=event_id, subscription_id=subscription_id
            )
        ]

    def repair(self, repair: Repair) -> CommitReport:
        """The jobs first, as a commit writes them; then what is resolved; then
        the count. A crash after the jobs and before the count leaves those jobs
        uncounted: run again, they exist, and only new jobs are counted (marks
        expire, so counting every job of the repair could count one twice)."""
        with unavailable_on_failure("repair"):
            created = insert_jobs(self.database[JOBS], repair.jobs, self._inserted_before_failure)
            insert_filter_failures(self.database, repair.filter_failures)
            for name, keys in ((DEAD_LETTERS, repair.letters), (FILTER_FAILURES, repair.failures)):
                if keys:
                    self.database[name].delete_many({"_id": {"$in": keys}})
            if repair.events or created:
                for events, jobs in in_parts(repair.events, created):
                    in_transaction(
                        self.database, partial(count_marked, self.database, events=events, jobs=jobs)
                    )
        self._inserted_before_failure.clear()
        return CommitReport(len(created), len(repair.jobs) - len(created), created)

    def close(self) -> None:
        pass  # the client is the caller's


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else NEVER
