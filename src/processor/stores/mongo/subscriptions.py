"""Subscriptions: loaded once, then kept current by their own change stream.

A load opens the stream, then reads the collection, in one causally
consistent session: the read waits for the majority point to pass where the
stream starts (``afterClusterTime``), so a write the stream starts after is
in the read, however far the majority point lags the last write.

Subscriptions as of each event's insert need the collection's pre- and
post-images (MongoDB 6.0, ``changeStreamPreAndPostImages``), which the first
load after a feed opens turns on (or creates the collection with). With them,
each update applies with the document as that update left it (the
post-image), and the first load after a restart gives the subscriptions as
they stood at the feed's start point T: the stream is opened at T and read up
to now, and a subscription changed since stood as its first change since T
found it (the pre-image; nowhere, when that change inserted it); each change
since T then applies from its own cluster time. Where the server keeps no
images (before 6.0, ``collMod`` refused, writes made before they were turned
on, a stream opened before T's history left the oplog), updates carry the
document as it is when read (``updateLookup``) and the subscriptions loaded
apply to every event as they are at the load, the backlog included.

Each document is read as the BSON bytes the server sent and decoded on its
own: one that pymongo cannot decode (a date beyond year 9999, invalid UTF-8,
as other drivers may write them) is skipped with an error log, and the others
load as usual.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import cast

from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo.change_stream import ChangeStream
from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure
from pymongo.read_concern import ReadConcern

from processor.stores.base import (
    StoreUnavailable,
    SubscriptionChange,
)
from processor.stores.mongo.documents import (
    NAMESPACE_EXISTS,
    RAW,
    SUBSCRIPTIONS,
    UNDECODABLE,
    Document,
    decode,
    decode_loosely,
    just_after,
    last_applied,
    order_of,
    subscription_document,
    subscription_id,
    unavailable_on_failure,
)
from processor.stores.mongo.feed import LOST_HISTORY, time_of_token

log = logging.getLogger(__name__)

NAMESPACE_NOT_FOUND = 26
NO_MATCHING_DOCUMENT = 47  # a change stream's required pre- or post-image is missing
IMAGES: Document = {"changeStreamPreAndPostImages": {"enabled": True}}
ENDINGS = frozenset({"drop", "rename", "dropDatabase", "invalidate"})  # the stream is over
WRITES = frozenset({"insert", "update", "replace", "delete"})
# How long a drain reads a stream that is behind the events' time (a mongos's
# merge waiting on a shard) before it gives up, to be retried with backoff.
DRAIN_SECONDS = 5.0


class _Ended(Exception):
    """The stream met a drop, rename or invalidate while a load read it."""


class MongoSubscriptions:
    """Subscriptions loaded once, then kept current by their own change stream."""

    def __init__(self, database: Database[Document], clock: Callable[[], float] = time.monotonic) -> None:
        self._database = database
        self._clock = clock
        # pymongo types the collection by the database's documents, whatever the codec says.
        self._collection = cast(
            "Collection[RawBSONDocument]",
            database.get_collection(SUBSCRIPTIONS, codec_options=RAW, read_concern=ReadConcern("majority")),
        )
        self._stream: ChangeStream[RawBSONDocument] | None = None
        self._session: ClientSession | None = None  # the stream's: its reads are causally after its start
        self._known: set[str] = set()  # handed out (or about to be) and not deleted since
        self._read: list[SubscriptionChange] = []  # read, not handed out yet: kept across a failure
        self._as_of: Timestamp | None = None  # where the feed starts, until a load has reached back to it
        self._images: bool | None = None  # whether the stream reads pre- and post-images; None: not tried yet

    def start(self, as_of: Timestamp | None) -> None:
        """A new feed, of the events after ``as_of`` (None: from the current point):
        the next call loads the subscriptions as they stood there, where it can."""
        self.close()
        self._as_of = as_of
        self._images = None  # tried again: they may have been turned on since

    def changes(self, through: Timestamp | None = None) -> list[SubscriptionChange]:
        """Every change committed so far, and at least those up to ``through``
        (the cluster time of the last event read)."""
        with unavailable_on_failure("subscriptions"):
            if self._stream is None or not self._stream.alive:
                self._reload(through)
            else:
                self._drain(through)
        changes, self._read = self._read, []
        return changes

    def _add(self, change: SubscriptionChange) -> None:
        if change.document is None:
            self._known.discard(change.subscription_id)
        else:
            self._known.add(change.subscription_id)
        self._read.append(change)

    def _reload(self, through: Timestamp | None) -> None:
        """Load them; as they are now, applying to every event, where a load as of the
        feed's start lacks what it needs (images, the history back to the start)."""
        while True:
            try:
                self._load(through)
                return
            except _Ended:
                log.warning("the subscriptions collection was dropped or renamed since the feed's start")
            except OperationFailure as error:
                if error.code == NO_MATCHING_DOCUMENT and self._images:
                    self._without_images(error)
                elif error.code in LOST_HISTORY and self._as_of is not None:
                    log.warning(
                        "the subscriptions' history since the feed's start is gone (%s)", _reason(error)
                    )
                else:
                    raise
            log.warning("subscriptions are loaded as they are now, and apply to every event")
            self._as_of = None

    def _load(self, through: Timestamp | None) -> None:
        """Watch first, from a time, then read everything, in one causally consistent
        session: no change can fall between the two, however far the majority
        point lags the last write. What is gone since the last load (a drop,
        lost history) is reported deleted."""
        self.close()
        images = self._pre_and_post_images()
        as_of = self._as_of if images else None
        session = self._database.client.start_session(causal_consistency=True)
        stream: ChangeStream[RawBSONDocument] | None = None
        try:
            stream = self._collection.watch(
                full_document="required" if images else "updateLookup",
                full_document_before_change="required" if images else None,
                # From just after the feed's start point, or the last write applied
                # (the find, in this session, then waits for the majority point to pass it).
                start_at_operation_time=just_after(
                    last_applied(self._database, session) if as_of is None else as_of
                ),
                max_await_time_ms=1,
                session=session,
            )
            found = map(stored_subscription, self._collection.find(session=session))
            standing: dict[str, SubscriptionChange | None] = {s.subscription_id: s for s in found}
            since: list[SubscriptionChange] = []
            if as_of is not None:
                # Read after the find, the stream passes every change the find saw:
                # a subscription changed since T stood as its first change found it.
                changed: set[str] = set()
                for change in self._read_through(stream, session.operation_time):
                    read = self._change(change)
                    if read is None:
                        continue
                    handed, before = read
                    if handed.subscription_id not in changed:
                        changed.add(handed.subscription_id)
                        standing[handed.subscription_id] = before
                    since.append(handed)
        except BaseException:
            if stream is not None:
                stream.close()  # kept, it would be drained next time and the load never done
            session.end_session()
            raise
        self._stream, self._session = stream, session
        self._read = []  # superseded by the load
        present = {key for key, stood in standing.items() if stood is not None}
        for gone in sorted(self._known - present):
            self._add(SubscriptionChange(gone, None, -1))
        for stood in standing.values():
            if stood is not None:
                self._add(stood)
        for handed in since:
            self._add(handed)
        self._as_of = None  # reached: a later load is of the subscriptions as they are then
        self._drain(through)

    def _drain(self, through: Timestamp | None) -> None:
        """Every change committed so far: the stream reads up to the majority commit
        point, which is past every event already read. Through a mongos, a quiet
        read only says that no shard answered in time: the stream is read until
        its token passes ``through``, for ``DRAIN_SECONDS`` at most."""
        assert self._stream is not None
        try:
            for change in self._read_through(self._stream, through):
                read = self._change(change)
                if read is not None:
                    self._add(read[0])
        except _Ended:
            self._reload(through)
        except OperationFailure as error:
            if error.code == NO_MATCHING_DOCUMENT and self._images:
                self._without_images(error)
            elif error.code in LOST_HISTORY:
                log.warning(
                    "the subscriptions stream lost its history (%s): reloading them all", _reason(error)
                )
            else:
                raise
            self._reload(through)

    def _read_through(
        self, stream: ChangeStream[RawBSONDocument], through: Timestamp | None
    ) -> Iterator[RawBSONDocument]:
        """The stream's changes until a read finds none with its token at or past
        ``through`` (a quiet read through a mongos only says that no shard
        answered in time), for ``DRAIN_SECONDS`` at most; then ``StoreUnavailable``,
        retried with backoff. Without ``through``, or a token that tells no time,
        until the first quiet read."""
        gives_up = self._clock() + DRAIN_SECONDS
        while True:
            change = stream.try_next()
            if change is not None:
                yield change
                continue
            reached = time_of_token(stream.resume_token)
            if through is None or reached is None or reached >= through:
                return
            if self._clock() >= gives_up:
                raise StoreUnavailable(
                    f"the subscriptions' change stream is at {reached}, before {through}: "
                    "a mongos waiting on a shard"
                )

    def _change(self, change: RawBSONDocument) -> tuple[SubscriptionChange, SubscriptionChange | None] | None:
        """A change as handed out, with the subscription as the change found it (its
        pre-image; None when it was nowhere or is unknown); None for an event that
        changes no subscription. Raises ``_Ended`` for one that ends the stream."""
        operation = change["operationType"]
        if operation in ENDINGS:
            raise _Ended(operation)
        if operation not in WRITES:
            return None
        key = subscription_id(decode_loosely(change["documentKey"]))
        order = order_of(change["clusterTime"])
        after = change.get("fullDocument")
        handed = (
            stored_subscription(after, order)
            if operation != "delete" and isinstance(after, RawBSONDocument)
            else SubscriptionChange(key, None, order)  # deleted, or since (``updateLookup``)
        )
        before = change.get("fullDocumentBeforeChange")
        return handed, stored_subscription(before) if isinstance(before, RawBSONDocument) else None

    def _pre_and_post_images(self) -> bool:
        """Whether the stream may ask for images: once a feed, turned on first."""
        if self._images is None:
            try:
                self._turn_on_images()
                self._images = True
            except OperationFailure as error:
                self._without_images(error)
        return bool(self._images)

    def _turn_on_images(self) -> None:
        """Pre- and post-images on the collection (its writes keep them from now on),
        or the collection created with them."""
        command = self._database.command
        try:
            command({"collMod": SUBSCRIPTIONS, **IMAGES})
        except OperationFailure as error:
            if error.code != NAMESPACE_NOT_FOUND:
                raise
            try:
                command({"create": SUBSCRIPTIONS, **IMAGES})
            except OperationFailure as exists:  # created meanwhile, by a write
                if exists.code != NAMESPACE_EXISTS:
                    raise
                command({"collMod": SUBSCRIPTIONS, **IMAGES})

    def _without_images(self, error: OperationFailure) -> None:
        self._images = False
        log.warning(
            "subscriptions without pre- and post-images (%s): until the feed is opened again, an update "
            "applies as the subscription is when it is read, and a restart applies those loaded to the "
            "whole backlog (turn them on: collMod %r with changeStreamPreAndPostImages {enabled: true})",
            _reason(error),
            SUBSCRIPTIONS,
        )

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._session is not None:
            self._session.end_session()
            self._session = None


def _reason(error: OperationFailure) -> str:
    """The server's message and code, without the whole reply pymongo appends."""
    message = (error.details or {}).get("errmsg") or str(error)
    return f"{message}; code {error.code}"


def stored_subscription(raw: RawBSONDocument, effective_after: int = -1) -> SubscriptionChange:
    """A stored subscription as the contract has it; with a ``problem`` (logged)
    when its bytes cannot be read: the matcher keeps none of it then, drops a
    version it held, and counts it invalid."""
    try:
        decoded = decode(raw)
    except UNDECODABLE as error:
        problem = f"cannot be decoded as BSON ({error})"
    else:
        try:
            return SubscriptionChange(
                subscription_id(decoded), subscription_document(decoded), effective_after
            )
        except (TypeError, ValueError) as error:
            problem = f"cannot be read as JSON ({error})"
    key = subscription_id(decode_loosely(raw))
    log.error("subscription %r skipped, it is invalid: document: %s", key, problem)
    return SubscriptionChange(key, None, effective_after, problem)
