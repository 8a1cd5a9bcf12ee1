"""The server, with the failures tests inject into it, and the pymongo classes a
store is handed: client, admin, database, collection."""

from __future__ import annotations

import copy
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from bson import ObjectId
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import InsertOne, UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure
from pymongo.results import BulkWriteResult, DeleteResult, InsertManyResult, InsertOneResult, UpdateResult

from tests.fake_mongo.data import Data
from tests.fake_mongo.indexes import DUPLICATE_KEY, Index, hashable
from tests.fake_mongo.oplog import Change, history_lost, position_of, position_of_token, token_of
from tests.fake_mongo.query import MISSING, Document, matches
from tests.fake_mongo.sessions import FakeSession, staged_writes
from tests.fake_mongo.streams import FakeChangeStream, FakeCursor
from tests.fake_mongo.updates import apply_update

INDEX_OPTIONS_CONFLICT = 85
INDEX_KEY_SPECS_CONFLICT = 86
DOCUMENT_VALIDATION_FAILURE = 121


@dataclass
class _Failure:
    operation: str
    collection: str | None
    error: BaseException
    after: int
    times: int


@dataclass
class _Rejection:
    collection: str
    code: int
    errmsg: str
    index: int
    times: int


class FakeMongo:
    """One database on a one-node "replica set" with an oplog."""

    def __init__(
        self, name: str = "flowcatalyst", *, lost_history_on: Literal["watch", "try_next"] = "watch"
    ) -> None:
        self.name = name
        self.lost_history_on = lost_history_on
        self.lock = threading.Condition(threading.RLock())
        self.data: dict[str, Data] = {}
        self.oplog: list[Change] = []
        self.dropped_through = -1  # the newest position that left the oplog
        # The majority commit point, when it lags the last applied entry: streams
        # stop before it moves on (None: every entry is majority-committed).
        self.majority_through: int | None = None
        self.calls: Counter[str] = Counter()
        self.streams: list[FakeChangeStream] = []
        self._last = (0, 0)
        self._failures: list[_Failure] = []
        self._rejections: list[_Rejection] = []
        self._hooks: list[tuple[str, str | None, Callable[[], None]]] = []
        self.client = FakeClient(self)
        self.database = FakeDatabase(self)
        self.append(None, "noop")  # a replica set's oplog is never empty

    @property
    def db(self) -> Database[Document]:
        """The fake where the store wants a pymongo ``Database``."""
        return cast("Database[Document]", self.database)

    # -- test controls --

    def fail_next(
        self,
        operation: str,
        error: BaseException,
        *,
        times: int = 1,
        after: int = 0,
        collection: str | None = None,
    ) -> None:
        """Let ``after`` calls of ``operation`` (on ``collection``, or any) pass,
        then make ``times`` of them raise ``error``. Operations: watch, try_next,
        find, cursor_next, insert_one, insert_many, bulk_write, update_one,
        create_index, list_indexes, command, start_session."""
        with self.lock:
            self._failures.append(_Failure(operation, collection, error, after, times))

    def reject_writes(
        self,
        collection: str,
        *,
        code: int = DOCUMENT_VALIDATION_FAILURE,
        errmsg: str = "Document failed validation",
        index: int = 0,
        times: int = 1,
    ) -> None:
        """The next ``times`` insert_many calls on ``collection`` report a write
        error with ``code`` for their document at ``index`` (and insert the others
        when unordered), as a server whose validator refuses one document does."""
        with self.lock:
            self._rejections.append(_Rejection(collection, code, errmsg, index, times))

    def when(self, operation: str, hook: Callable[[], None], collection: str | None = None) -> None:
        """Call ``hook`` at each call of ``operation``, before it does anything."""
        with self.lock:
            self._hooks.append((operation, collection, hook))

    def truncate_oplog(self, keep: int = 1) -> None:
        """Drop all but the newest ``keep`` entries, as a capped oplog does."""
        keep = max(1, keep)  # an oplog is never empty
        with self.lock:
            dropped, self.oplog = self.oplog[:-keep], self.oplog[-keep:]
            if dropped:
                self.dropped_through = dropped[-1].position

    def close_streams(self, collection: str | None = None) -> None:
        """Kill the server cursors of open streams: they are no longer ``alive``."""
        with self.lock:
            for stream in self.streams:
                if collection is None or stream.collection == collection:
                    stream.close()

    def cluster_time(self) -> Timestamp:
        with self.lock:
            return self.oplog[-1].cluster_time

    def newest_token(self) -> Document:
        with self.lock:
            return token_of(self.oplog[-1].position)

    # -- the machinery --

    def enter(self, operation: str, collection: str | None) -> None:
        """Count a call, run its hooks, raise the failure injected for it, if any."""
        with self.lock:
            self.calls[operation] += 1
            hooks = [h for o, c, h in self._hooks if o == operation and c in (None, collection)]
        for hook in hooks:
            hook()
        with self.lock:
            for failure in self._failures:
                if failure.operation != operation or failure.collection not in (None, collection):
                    continue
                if failure.after > 0:
                    failure.after -= 1
                    return
                failure.times -= 1
                if failure.times <= 0:
                    self._failures.remove(failure)
                raise failure.error

    def rejection(self, collection: str) -> _Rejection | None:
        with self.lock:
            for rejection in self._rejections:
                if rejection.collection == collection:
                    rejection.times -= 1
                    if rejection.times <= 0:
                        self._rejections.remove(rejection)
                    return rejection
            return None

    def append(self, collection: str | None, operation: str, **details: Any) -> Change:
        with self.lock:
            now = int(time.time())
            seconds, increment = self._last
            self._last = (now, 1) if now > seconds else (seconds, increment + 1)
            cluster_time = Timestamp(*self._last)
            change = Change(position_of(cluster_time), cluster_time, collection, operation, **details)
            self.oplog.append(change)
            self.lock.notify_all()
            return change

    def collection_data(self, name: str) -> Data:
        with self.lock:
            return self.data.setdefault(name, Data())


class FakeClient:
    def __init__(self, server: FakeMongo) -> None:
        self._server = server
        self.admin = FakeAdmin(server)

    def start_session(self, **options: Any) -> FakeSession:
        self._server.enter("start_session", None)
        return FakeSession(self._server)


class FakeAdmin:
    def __init__(self, server: FakeMongo) -> None:
        self._server = server

    def command(self, command: str | Mapping[str, Any], **options: Any) -> Document:
        self._server.enter("command", None)
        name = command if isinstance(command, str) else next(iter(command))
        if name != "ping":
            raise NotImplementedError(f"command {name}")
        return {"ok": 1.0, "operationTime": self._server.cluster_time()}


class FakeDatabase:
    def __init__(self, server: FakeMongo) -> None:
        self._server = server
        self.name = server.name
        self.client = server.client

    def __getitem__(self, name: str) -> FakeCollection:
        return FakeCollection(self._server, self, name)

    def get_collection(
        self, name: str, codec_options: CodecOptions[Any] | None = None, **options: Any
    ) -> FakeCollection:
        raw = codec_options is not None and codec_options.document_class is RawBSONDocument
        return FakeCollection(self._server, self, name, raw=raw)

    def command(
        self, command: str | Mapping[str, Any], value: Any = None, session: Any = None, **fields: Any
    ) -> Document:
        """``collMod`` and ``create`` with ``changeStreamPreAndPostImages``, as MongoDB 6.0
        answers them (the store turns images on for its subscriptions' stream);
        ``insert`` and ``update`` as the bulk writes they are."""
        if isinstance(command, str):
            command = {command: value, **fields}
        name, collection = next(iter(command.items()))
        if name in ("insert", "update"):
            options = {k: v for k, v in command.items() if k != name}
            return self._write_command(name, collection, session, **options)
        self._server.enter(name, collection)
        if set(command) - {name, "changeStreamPreAndPostImages"} or name not in ("collMod", "create"):
            raise NotImplementedError(f"command {dict(command)}")
        with self._server.lock:
            exists = collection in self._server.data
            if name == "collMod" and not exists:
                raise _command_error(26, "NamespaceNotFound", "ns does not exist")
            if name == "create" and exists:
                raise _command_error(
                    48, "NamespaceExists", f"Collection {self.name}.{collection} already exists."
                )
            images = command.get("changeStreamPreAndPostImages")
            if images is not None:
                self._server.collection_data(collection).pre_and_post_images = bool(images["enabled"])
        return {"ok": 1.0}

    def _write_command(
        self, name: str, collection: str, session: Any, ordered: bool = True, **fields: Any
    ) -> Document:
        if name == "insert":
            requests: list[Any] = [InsertOne(d) for d in fields.pop("documents")]
        elif name == "update":
            requests = [
                UpdateOne(u.pop("q"), u.pop("u"), upsert=u.pop("upsert", False))
                for u in fields.pop("updates")
            ]
        else:
            raise NotImplementedError(f"command {name}")
        if fields:
            raise NotImplementedError(f"command {name} with {sorted(fields)}")
        try:
            result = self[collection].bulk_write(requests, ordered=ordered, session=session)
        except BulkWriteError as error:
            return {"ok": 1.0, "writeErrors": error.details["writeErrors"]}
        return {"ok": 1.0, "n": result.inserted_count + result.matched_count + result.upserted_count}


class FakeCollection:
    """``raw``: documents are read as ``RawBSONDocument``, as pymongo reads them
    for a collection whose codec says so."""

    def __init__(self, server: FakeMongo, database: FakeDatabase, name: str, *, raw: bool = False) -> None:
        self._server = server
        self.database = database
        self.name = name
        self._raw = raw

    @property
    def _data(self) -> Data:
        return self._server.collection_data(self.name)

    # -- reads --

    def find(
        self,
        filter: Mapping[str, Any] | None = None,
        projection: Mapping[str, Any] | None = None,
        *,
        sort: Sequence[tuple[str, int]] | None = None,
        batch_size: int = 0,
        limit: int = 0,
        session: Any = None,
    ) -> FakeCursor:
        self._server.enter("find", self.name)
        query = dict(filter or {})
        return FakeCursor(self._server, self.name, query, projection, sort, raw=self._raw, limit=limit)

    def find_one(self, filter: Mapping[str, Any] | None = None, **options: Any) -> Document | None:
        return next(iter(self.find(filter, **options)), None)

    def count_documents(self, filter: Mapping[str, Any], **options: Any) -> int:
        with self._server.lock:
            return sum(1 for d in self._data.documents.values() if matches(d, filter))

    # -- writes --

    def insert_one(self, document: Document, session: Any = None) -> InsertOneResult:
        self._server.enter("insert_one", self.name)
        document.setdefault("_id", ObjectId())
        with self._server.lock:
            conflict = self._data.conflict(document, self.name)
            if conflict is not None:
                raise DuplicateKeyError(conflict["errmsg"], DUPLICATE_KEY, conflict)
            self._insert(document)
        return InsertOneResult(document["_id"], True)

    def insert_many(
        self, documents: Iterable[Document], ordered: bool = True, session: Any = None
    ) -> InsertManyResult:
        self._server.enter("insert_many", self.name)
        documents = list(documents)
        for document in documents:
            document.setdefault("_id", ObjectId())
        rejection = self._server.rejection(self.name)
        errors: list[Document] = []
        inserted: list[Any] = []
        with self._server.lock:
            for number, document in enumerate(documents):
                if rejection is not None and number == rejection.index:
                    error: Document | None = {"code": rejection.code, "errmsg": rejection.errmsg}
                else:
                    error = self._data.conflict(document, self.name)
                if error is not None:
                    errors.append({"index": number, **error, "op": document})
                    if ordered:
                        break
                    continue
                self._insert(document)
                inserted.append(document["_id"])
        if errors:
            raise BulkWriteError(_bulk_result(n_inserted=len(inserted), errors=errors))
        return InsertManyResult(inserted, True)

    def update_one(
        self, filter: Mapping[str, Any], update: Mapping[str, Any], upsert: bool = False, session: Any = None
    ) -> UpdateResult:
        self._server.enter("update_one", self.name)
        with self._server.lock:
            matched, upserted = self._update(filter, update, upsert, replace=False)
        return UpdateResult({"n": matched or int(upserted is not None), "upserted": upserted}, True)

    def replace_one(
        self,
        filter: Mapping[str, Any],
        replacement: Mapping[str, Any],
        upsert: bool = False,
        session: Any = None,
    ) -> UpdateResult:
        self._server.enter("replace_one", self.name)
        with self._server.lock:
            matched, upserted = self._update(filter, replacement, upsert, replace=True)
        return UpdateResult({"n": matched or int(upserted is not None), "upserted": upserted}, True)

    def delete_one(self, filter: Mapping[str, Any], session: Any = None) -> DeleteResult:
        self._server.enter("delete_one", self.name)
        with self._server.lock:
            for key, document in self._data.documents.items():
                if matches(document, filter):
                    del self._data.documents[key]
                    before = document if self._data.pre_and_post_images else None
                    self._server.append(self.name, "delete", key=document["_id"], before=before)
                    return DeleteResult({"n": 1}, True)
        return DeleteResult({"n": 0}, True)

    def delete_many(self, filter: Mapping[str, Any], session: Any = None) -> DeleteResult:
        self._server.enter("delete_many", self.name)
        deleted = 0
        with self._server.lock:
            for key, document in list(self._data.documents.items()):
                if matches(document, filter):
                    del self._data.documents[key]
                    before = document if self._data.pre_and_post_images else None
                    self._server.append(self.name, "delete", key=document["_id"], before=before)
                    deleted += 1
        return DeleteResult({"n": deleted}, True)

    def bulk_write(
        self, requests: Sequence[Any], ordered: bool = True, session: Any = None
    ) -> BulkWriteResult:
        self._server.enter("bulk_write", self.name)
        staged = staged_writes(session)
        if staged is not None:
            writes = copy.deepcopy(list(requests))

            def commit() -> None:
                self._bulk_write(writes, ordered)

            staged.append(commit)
            return BulkWriteResult(_bulk_result(), True)
        return self._bulk_write(requests, ordered)

    def drop(self, session: Any = None) -> None:
        self._server.enter("drop", self.name)
        with self._server.lock:
            existed = self.name in self._server.data
            self._server.data.pop(self.name, None)
            if existed:
                self._server.append(self.name, "drop")
                self._server.append(self.name, "invalidate")

    # -- indexes --

    def list_indexes(self, session: Any = None) -> Iterator[Document]:
        self._server.enter("list_indexes", self.name)
        with self._server.lock:
            return iter([index.describe() for index in self._data.indexes.values()])

    def create_index(
        self,
        keys: Sequence[tuple[str, Any]],
        name: str | None = None,
        unique: bool = False,
        # pymongo's spelling:
        expireAfterSeconds: int | None = None,  # noqa: N803
        **options: Any,
    ) -> str:
        self._server.enter("create_index", self.name)
        spec = tuple(keys)
        name = name or "_".join(f"{field}_{direction}" for field, direction in spec)
        wanted = Index(name, spec, unique, expireAfterSeconds)
        with self._server.lock:
            data = self._data
            same_name = data.indexes.get(name)
            if same_name is not None and same_name.keys != spec:
                raise _command_error(
                    INDEX_KEY_SPECS_CONFLICT,
                    "IndexKeySpecsConflict",
                    f"An existing index has the same name as the requested index. "
                    f"Requested index: {wanted.describe()}, existing index: {same_name.describe()}",
                )
            for existing in data.indexes.values():
                if existing.keys != spec:
                    continue
                if existing == wanted:
                    return name  # exactly this index exists: nothing to do
                reason = (
                    f"Index already exists with a different name: {existing.name}"
                    if existing.name != name
                    else "An equivalent index already exists with the same name but different options."
                )
                raise _command_error(INDEX_OPTIONS_CONFLICT, "IndexOptionsConflict", reason)
            if unique:
                seen: dict[tuple[Any, ...], Any] = {}
                for document in data.documents.values():
                    key = wanted.key_of(document)
                    if key in seen:
                        duplicate = dict(zip(dict(spec), key, strict=True))
                        message = (
                            f"Index build failed: E11000 duplicate key error collection: "
                            f"fake.{self.name} index: {name} dup key: {duplicate}"
                        )
                        raise DuplicateKeyError(
                            message,
                            DUPLICATE_KEY,
                            {"ok": 0.0, "errmsg": message, "code": DUPLICATE_KEY, "codeName": "DuplicateKey"},
                        )
                    seen[key] = document["_id"]
            data.indexes[name] = wanted
        return name

    # -- change streams --

    def watch(
        self,
        pipeline: Sequence[Mapping[str, Any]] | None = None,
        *,
        full_document: str | None = None,
        full_document_before_change: str | None = None,
        resume_after: Mapping[str, Any] | None = None,
        start_after: Mapping[str, Any] | None = None,
        max_await_time_ms: int | None = None,
        batch_size: int | None = None,
        start_at_operation_time: Timestamp | None = None,
        **options: Any,
    ) -> FakeChangeStream:
        self._server.enter("watch", self.name)
        server = self._server
        with server.lock:
            lost = False
            resume_after = resume_after or start_after
            if resume_after is not None:
                position = position_of_token(resume_after)
                if position is None:
                    raise _command_error(260, "InvalidResumeToken", "invalid resume token")
                start = position
                # MongoDB resumes only from an entry the oplog still holds: the
                # token's own, even when nothing after it was dropped.
                lost = start <= server.dropped_through
            elif start_at_operation_time is not None:
                start = position_of(start_at_operation_time) - 1
                lost = start < server.dropped_through
            else:
                start = server.oplog[-1].position
            if lost and server.lost_history_on == "watch":
                raise history_lost()
            stream = FakeChangeStream(
                server,
                self.name,
                list(pipeline or []),
                full_document=full_document,
                full_document_before_change=full_document_before_change,
                position=start,
                max_await=(max_await_time_ms or 1000) / 1000,
                error=history_lost() if lost else None,
                raw=self._raw,
            )
            server.streams.append(stream)
            return stream

    # -- internals, under the server's lock --

    def _insert(self, document: Document) -> None:
        stored = copy.deepcopy(document)
        self._data.documents[hashable(stored["_id"])] = stored
        self._server.append(self.name, "insert", key=stored["_id"], document=copy.deepcopy(stored))

    def _update(
        self, filter: Mapping[str, Any], update: Mapping[str, Any], upsert: bool, replace: bool
    ) -> tuple[int, Any]:
        """Returns (documents matched, the _id upserted or None)."""
        data = self._data
        for key, document in data.documents.items():
            if not matches(document, filter):
                continue
            if replace:
                changed = {"_id": document["_id"], **copy.deepcopy(dict(update))}
            else:
                changed = apply_update(document, update, inserting=False)
            conflict = data.conflict(changed, self.name, ignore=key)
            if conflict is not None:
                raise DuplicateKeyError(conflict["errmsg"], DUPLICATE_KEY, conflict)
            if changed != document:
                data.documents[key] = changed
                images = data.pre_and_post_images
                before = copy.deepcopy(document) if images else None
                if replace:
                    self._server.append(
                        self.name,
                        "replace",
                        key=changed["_id"],
                        document=copy.deepcopy(changed),
                        before=before,
                    )
                else:
                    updated = {k: v for k, v in changed.items() if document.get(k, MISSING) != v}
                    removed = [k for k in document if k not in changed]
                    description = {"updatedFields": updated, "removedFields": removed}
                    self._server.append(
                        self.name,
                        "update",
                        key=changed["_id"],
                        update=description,
                        document=copy.deepcopy(changed) if images else None,
                        before=before,
                    )
            return 1, None
        if not upsert:
            return 0, None
        base = {
            name: value
            for name, value in filter.items()
            if not (isinstance(value, Mapping) and any(k.startswith("$") for k in value))
        }
        if replace:
            created = {**base, **copy.deepcopy(dict(update))}
        else:
            created = apply_update(base, update, inserting=True)
        created.setdefault("_id", ObjectId())
        conflict = data.conflict(created, self.name)
        if conflict is not None:
            raise DuplicateKeyError(conflict["errmsg"], DUPLICATE_KEY, conflict)
        self._insert(created)
        return 0, created["_id"]

    def _bulk_write(self, requests: Sequence[Any], ordered: bool) -> BulkWriteResult:
        errors: list[Document] = []
        inserted = matched = 0
        upserted: list[Document] = []
        with self._server.lock:
            for number, request in enumerate(requests):
                kind = type(request).__name__
                try:
                    if kind == "InsertOne":
                        document = request._doc
                        document.setdefault("_id", ObjectId())
                        conflict = self._data.conflict(document, self.name)
                        if conflict is not None:
                            raise DuplicateKeyError(conflict["errmsg"], DUPLICATE_KEY, conflict)
                        self._insert(document)
                        inserted += 1
                    elif kind in ("UpdateOne", "ReplaceOne"):
                        found, key = self._update(
                            request._filter, request._doc, bool(request._upsert), replace=kind == "ReplaceOne"
                        )
                        matched += found
                        if key is not None:
                            upserted.append({"index": number, "_id": key})
                    else:
                        raise NotImplementedError(f"bulk_write of {kind}")
                except DuplicateKeyError as error:
                    errors.append({"index": number, **(error.details or {})})
                    if ordered:
                        break
        result = _bulk_result(n_inserted=inserted, n_matched=matched, upserted=upserted, errors=errors)
        if errors:
            raise BulkWriteError(result)
        return BulkWriteResult(result, True)


def _bulk_result(
    n_inserted: int = 0,
    n_matched: int = 0,
    upserted: list[Document] | None = None,
    errors: list[Document] | None = None,
) -> Document:
    return {
        "writeErrors": errors or [],
        "writeConcernErrors": [],
        "nInserted": n_inserted,
        "nUpserted": len(upserted or []),
        "nMatched": n_matched,
        "nModified": n_matched,
        "nRemoved": 0,
        "upserted": upserted or [],
    }


def _command_error(code: int, name: str, message: str) -> OperationFailure:
    return OperationFailure(message, code, {"ok": 0.0, "errmsg": message, "code": code, "codeName": name})
