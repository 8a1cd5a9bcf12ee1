"""Subscriptions: loaded once, then kept current by their own change stream."""

from __future__ import annotations

import logging

from pymongo.change_stream import ChangeStream
from pymongo.database import Database
from pymongo.errors import OperationFailure
from pymongo.read_concern import ReadConcern

from processor.stores.base import (
    SubscriptionChange,
)
from processor.stores.mongo.documents import (
    SUBSCRIPTIONS,
    Document,
    order_of,
    subscription_document,
    subscription_id,
    unavailable_on_failure,
)
from processor.stores.mongo.feed import LOST_HISTORY

log = logging.getLogger(__name__)


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
                SubscriptionChange(subscription_id(d), subscription_document(d), -1)
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
                        else subscription_document(document),
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
