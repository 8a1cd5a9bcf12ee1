"""What reads return: a query's cursor and a change stream on the oplog, both read
lazily, as pymongo's are."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo.errors import OperationFailure

from tests.fake_mongo.indexes import hashable
from tests.fake_mongo.oplog import Change, history_lost, token_of
from tests.fake_mongo.query import Document, matches, project, sort_key

if TYPE_CHECKING:
    from tests.fake_mongo.server import FakeMongo


NO_MATCHING_DOCUMENT = 47
IMAGE_MODES = ("whenAvailable", "required")  # fullDocument and fullDocumentBeforeChange from the kept images
MAX_AWAIT_CAP = 0.1  # seconds an idle try_next waits at most, whatever it is asked


class FakeCursor:
    """Runs its query at the first read; dead after an error, as pymongo's is."""

    def __init__(
        self,
        server: FakeMongo,
        collection: str,
        query: Document,
        projection: Mapping[str, Any] | None,
        sort: Sequence[tuple[str, int]] | None,
        *,
        raw: bool = False,
        limit: int = 0,
    ) -> None:
        self._server = server
        self._raw = raw
        self._limit = limit
        self._collection = collection
        self._query = query
        self._projection = projection
        self._sort = list(sort or [])
        self._results: Iterator[Document] | None = None
        self.alive = True

    def __iter__(self) -> FakeCursor:
        return self

    def __next__(self) -> Document:
        if not self.alive:
            raise StopIteration
        try:
            self._server.enter("cursor_next", self._collection)
        except BaseException:
            self.alive = False
            raise
        if self._results is None:
            with self._server.lock:
                found = [
                    copy.deepcopy(d)
                    for d in self._server.collection_data(self._collection).documents.values()
                    if matches(d, self._query)
                ]
            for name, direction in reversed(self._sort):
                found.sort(key=lambda d, n=name: sort_key(d.get(n)), reverse=direction < 0)  # type: ignore[misc]
            if self._limit:
                found = found[: self._limit]
            self._results = iter([project(d, self._projection) for d in found])
        try:
            return read_as(next(self._results), raw=self._raw)
        except StopIteration:
            self.alive = False
            raise

    def close(self) -> None:
        self.alive = False


class FakeChangeStream:
    """Reads the oplog after a position; ``resume_token`` is the token of the last
    change returned, or, once nothing is left, the newest oplog entry's (the
    post-batch resume token: an idle stream's token moves with the oplog)."""

    def __init__(
        self,
        server: FakeMongo,
        collection: str,
        pipeline: list[Mapping[str, Any]],
        *,
        full_document: str | None,
        full_document_before_change: str | None = None,
        position: int,
        max_await: float,
        error: OperationFailure | None,
        raw: bool = False,
    ) -> None:
        self._raw = raw
        self._server = server
        self.collection = collection
        self._match = [stage["$match"] for stage in pipeline if "$match" in stage]
        self._project = [stage["$project"] for stage in pipeline if "$project" in stage]
        self._full_document = full_document
        self._full_document_before_change = full_document_before_change
        self._position = position
        self._max_await = min(max_await, MAX_AWAIT_CAP)
        self._error = error
        self._closed = False

    @property
    def alive(self) -> bool:
        return not self._closed

    @property
    def resume_token(self) -> Document:
        return token_of(self._position)

    def close(self) -> None:
        self._closed = True

    def try_next(self) -> Document | None:
        server = self._server
        server.enter("try_next", self.collection)
        with server.lock:
            change = self.poll()
            if change is None and not self._closed:
                server.lock.wait(self._max_await)
                change = self.poll()
            return None if change is None else read_as(change, raw=self._raw)

    def poll(self) -> Document | None:
        """Under the server's lock: the next change of this stream that passes its
        pipeline, if one is committed, without waiting; raises the stream's error."""
        server = self._server
        if self._closed:
            return None
        if self._error is not None or self._position < server.dropped_through:
            self._closed = True
            raise self._error or history_lost()
        for entry in server.oplog:
            if entry.position <= self._position:
                continue
            if server.majority_through is not None and entry.position > server.majority_through:
                return None  # applied, not yet majority-committed: a stream does not see it
            self._position = entry.position
            if entry.collection != self.collection:
                continue
            change = self._describe(entry)
            if entry.operation == "invalidate":
                # The server closes the cursor on it, and hands it out whatever
                # the pipeline: a reader must be able to tell the stream ended.
                self._closed = True
                return change
            if all(matches(change, query) for query in self._match):
                for projection in self._project:
                    change = project(change, projection)
                return change
        return None

    def _describe(self, entry: Change) -> Document:
        change: Document = {
            "_id": token_of(entry.position),
            "operationType": entry.operation,
            "clusterTime": entry.cluster_time,
            "wallTime": datetime.fromtimestamp(entry.cluster_time.time, UTC),
            "ns": {"db": self._server.name, "coll": self.collection},
        }
        if entry.operation in ("insert", "update", "replace", "delete"):
            change["documentKey"] = {"_id": entry.key}
        if entry.operation in ("insert", "replace"):
            change["fullDocument"] = copy.deepcopy(entry.document)
        # The pre-image first: MongoDB adds it before the post-image, which it makes from it.
        if (
            entry.operation in ("update", "replace", "delete")
            and self._full_document_before_change in IMAGE_MODES
        ):
            change["fullDocumentBeforeChange"] = self._image(
                entry.before, self._full_document_before_change, "pre", change
            )
        if entry.operation == "update":
            change["updateDescription"] = copy.deepcopy(entry.update)
            if self._full_document == "updateLookup":
                current = self._server.collection_data(self.collection).documents.get(hashable(entry.key))
                change["fullDocument"] = copy.deepcopy(current)
            elif self._full_document in IMAGE_MODES:
                change["fullDocument"] = self._image(entry.document, self._full_document, "post", change)
        return change

    def _image(self, image: Document | None, mode: str, kind: str, change: Document) -> Document | None:
        """A pre- or post-image the write kept; where it kept none, null ("whenAvailable")
        or, "required", the error MongoDB 6.0 ends the stream with."""
        if image is not None:
            return copy.deepcopy(image)
        if mode == "whenAvailable":
            return None
        self._closed = True
        events = "update events" if kind == "post" else "update, delete and replace events"
        message = (
            f"Change stream was configured to require a {kind}-image for all {events}, "
            f"but the {kind}-image was not found for event: {change['_id']}"
        )
        raise OperationFailure(
            message,
            code=NO_MATCHING_DOCUMENT,
            details={
                "ok": 0.0,
                "errmsg": message,
                "code": NO_MATCHING_DOCUMENT,
                "codeName": "NoMatchingDocument",
            },
        )


RAW: CodecOptions[RawBSONDocument] = CodecOptions(document_class=RawBSONDocument, tz_aware=True)


def read_as(document: Document, *, raw: bool) -> Document:
    """A document as the reader's codec has it: as stored, or as its BSON bytes
    (which read as a mapping too)."""
    return cast(Document, RawBSONDocument(bson.encode(document), RAW)) if raw else document
