"""``WireMongo``: a one-member replica set that pymongo reaches over TCP, and the
controls tests use to make it behave as MongoDB 6.0 does when things go wrong."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import bson
from bson import ObjectId
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.raw_bson import RawBSONDocument
from bson.son import SON
from bson.timestamp import Timestamp
from mockupdb import Request
from pymongo import MongoClient
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from tests.fake_mongo import Document, FakeMongo
from tests.fake_mongo.indexes import hashable
from tests.fake_mongo.oplog import position_of, position_of_token
from tests.fake_mongo.query import matches
from tests.fake_mongo.streams import FakeChangeStream
from tests.wire_mongo.listener import Listener
from tests.wire_mongo.transactions import NO_SUCH_TRANSACTION, TRANSIENT, WRITE_CONFLICT, Transaction

MAX_BSON_BYTES = 16 * 1024 * 1024
SET_NAME = "rs0"
WIRE_VERSION = 17  # MongoDB 6.0
AWAIT_CAP = 0.2  # seconds an awaiting getMore waits at most, whatever maxTimeMS asks: tests stay quick
CAUSAL_WAIT = 30.0  # seconds a read waits for the majority point to reach its afterClusterTime

CODE_NAMES = {
    26: "NamespaceNotFound",
    48: "NamespaceExists",
    59: "CommandNotFound",
    64: "WriteConcernFailed",
    67: "CannotCreateIndex",
    91: "ShutdownInProgress",
    112: "WriteConflict",
    189: "PrimarySteppedDown",
    251: "NoSuchTransaction",
    260: "InvalidResumeToken",
    286: "ChangeStreamHistoryLost",
    10107: "NotWritablePrimary",
    10334: "BSONObjectTooLarge",
    11000: "DuplicateKey",
    11600: "InterruptedAtShutdown",
    40573: "Location40573",  # a numbered assertion: mongod names it after its code
}
# What a server that cannot take writes, or is shutting down, labels its errors with.
FAILOVER_LABELS = ("RetryableWriteError", "ResumableChangeStreamError")
NON_RESUMABLE = "NonResumableChangeStreamError"
# How the engine reads a document stored raw: whatever bytes it holds, it can be indexed and matched.
LOOSE: CodecOptions[Document] = CodecOptions(
    tz_aware=True,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
    unicode_decode_error_handler="replace",
)


class CommandError(Exception):
    """A command's failure, as the reply mongod sends."""

    def __init__(self, code: int, message: str, labels: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.reply: Document = {
            "ok": 0.0,
            "errmsg": message,
            "code": code,
            "codeName": CODE_NAMES.get(code, ""),
        }
        if labels:
            self.reply["errorLabels"] = list(labels)


@dataclass
class FailPoint:
    """mongod's ``failCommand`` fail point: the next ``times`` matching commands
    fail with ``code``, or close the connection, or succeed with a write concern error."""

    commands: frozenset[str]
    collection: str | None
    code: int | None
    labels: tuple[str, ...]
    write_concern_error: Document | None
    close_connection: bool
    times: int

    def applies(self, name: str, body: Document) -> bool:
        collection = body.get("collection") if name == "getMore" else body.get(name)
        return name in self.commands and self.collection in (None, collection)


@dataclass
class Cursor:
    namespace: str
    collection: str
    documents: Iterator[Mapping[str, Any]] | None = None  # a query's results, to be read
    stream: FakeChangeStream | None = None
    held: Document | None = None  # a change read and not sent: it goes first next time
    sent_token: Document | None = None  # the token of the last change sent
    answered_token: Document | None = None  # the post-batch resume token of the last reply


@dataclass
class Sessions:
    transactions: dict[tuple[bytes, int], Transaction] = field(default_factory=dict)
    committed: set[tuple[bytes, int]] = field(default_factory=set)
    retried: dict[tuple[bytes, int], Document] = field(default_factory=dict)


class WireMongo:
    """A replica set of one member on a local port, on the test double's engine
    (documents, indexes, oplog, change streams), answering the commands pymongo
    sends as mongod 6.0 answers them. A command it does not model is answered
    ``CommandNotFound`` and recorded: ``check()`` (the fixture calls it) fails
    the test with its name."""

    def __init__(self, database: str = "flowcatalyst", *, standalone: bool = False) -> None:
        """``standalone``: a mongod that is no replica set member (no set in ``hello``,
        no cluster time in replies, no change streams), as a misconfigured deployment has."""
        self.engine = FakeMongo(database)
        self.standalone = standalone
        self.lock = self.engine.lock
        self.commands: Counter[str] = Counter()
        self.problems: list[str] = []
        self.reads_waited = 0  # reads that waited for the majority point to reach their afterClusterTime
        self._cursors: dict[int, Cursor] = {}
        self._cursor_ids = itertools.count(1_000_001)
        self._fail_points: list[FailPoint] = []
        self._sessions = Sessions()
        self._raw: dict[tuple[str, Any], bytes] = {}
        self._shard_keys: dict[str, Document] = {}
        self._merges_held: Counter[str] = Counter()  # by collection: getMores a mongos answers empty
        self._election = ObjectId()
        self._watchers: list[Callable[[str, Document], None]] = []
        self._listener = Listener(self._answer)
        self.address = f"127.0.0.1:{self._listener.port}"

    # -- lifetime -------------------------------------------------------------

    def __enter__(self) -> WireMongo:
        self._listener.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.stop()

    @property
    def uri(self) -> str:
        if self.standalone:
            return f"mongodb://{self.address}/?directConnection=true"
        return f"mongodb://{self.address}/?replicaSet={SET_NAME}"

    def client(self, **options: Any) -> MongoClient[Document]:
        settings: dict[str, Any] = {"tz_aware": True, "serverSelectionTimeoutMS": 10_000, **options}
        return MongoClient(self.uri, **settings)

    def check(self) -> None:
        """Fail with every command the server could not answer as MongoDB would."""
        assert not self.problems, "the wire server met what it does not model: " + "; ".join(self.problems)

    # -- controls ---------------------------------------------------------------

    def fail_command(
        self,
        *commands: str,
        code: int | None = None,
        labels: Iterable[str] = (),
        write_concern_error: Document | None = None,
        close_connection: bool = False,
        times: int = 1,
        collection: str | None = None,
    ) -> None:
        with self.lock:
            self._fail_points.append(
                FailPoint(
                    frozenset(commands),
                    collection,
                    code,
                    tuple(labels),
                    write_concern_error,
                    close_connection,
                    times,
                )
            )

    def elect(self) -> None:
        """A new election: the primary the clients find next carries a new election id."""
        with self.lock:
            self._election = ObjectId()

    def step_down(self) -> None:
        """A new election, and every connection dropped, as a primary stepping down does."""
        self.elect()
        self._listener.drop_connections()

    @contextlib.contextmanager
    def majority_lags(self) -> Iterator[None]:
        """Within: writes are applied but the majority commit point stays where it
        was, so majority reads and change streams do not see them yet."""
        self.hold_majority()
        try:
            yield
        finally:
            self.release_majority()

    def hold_majority(self) -> None:
        """From now on the majority commit point stays where it is (``majority_lags``)."""
        with self.lock:
            self.engine.majority_through = self.engine.oplog[-1].position

    def release_majority(self) -> None:
        """The majority commit point catches up with every write, and goes on with them."""
        with self.lock:
            self.engine.majority_through = None
            self.lock.notify_all()

    def shard(self, collection: str, key: Document) -> None:
        """Shard ``collection`` on ``key``, as mongos would: a unique index must then begin with it."""
        with self.lock:
            self._shard_keys[collection] = dict(key)

    def merge_lags(self, collection: str, replies: int) -> None:
        """The next ``replies`` replies of change streams on ``collection`` (their
        first batches and getMores) answer no change and the post-batch token of
        the reply before, as a mongos does
        while a shard has not answered within ``maxAwaitTimeMS``: changes already
        committed are held in its merge, and an empty batch does not mean caught up.
        Replaces what an earlier call left: 0 ends it."""
        with self.lock:
            self._merges_held[collection] = replies

    def insert_raw(self, collection: str, raw: bytes) -> None:
        """Store a document exactly as its BSON bytes say, as another driver may
        write one: readers receive these bytes, whatever pymongo makes of them."""
        document = bson.decode(raw, LOOSE)
        with self.lock:
            self._raw[(collection, hashable(document["_id"]))] = raw
            self.engine.database[collection].insert_one(document)

    def when(self, hook: Callable[[str, Document], None]) -> None:
        """Call ``hook(command, body)`` before each command is run."""
        with self.lock:
            self._watchers.append(hook)

    # -- answering --------------------------------------------------------------

    def _answer(self, request: Request) -> bool:
        body = _plain(request.doc)
        name = next(iter(body))
        with self.lock:
            self.commands[name] += 1
            watchers = list(self._watchers)
        for hook in watchers:
            hook(name, body)
        try:
            reply = self._run(name, body)
        except _Hangup:
            return False
        except CommandError as error:
            reply = dict(error.reply)
        except Exception as error:  # a command this server does not model: the test must fail
            with self.lock:
                self.problems.append(f"{name}: {type(error).__name__}: {error}")
            reply = {"ok": 0.0, "code": 1, "codeName": "InternalError", "errmsg": f"wire server: {error}"}
        reply.setdefault("ok", 1.0)
        if not self.standalone:  # a standalone keeps no cluster time
            with self.lock:
                now = self.engine.cluster_time()
                through = self.engine.majority_through
            # A majority read (a change stream is one) answers with the majority
            # point, which may be behind the last write; others with the last write.
            majority = (body.get("readConcern") or {}).get("level") == "majority" or _watches(body)
            if majority and through is not None:
                reply["operationTime"] = Timestamp(through >> 32, through & 0xFFFFFFFF)
            else:
                reply["operationTime"] = now
            reply["$clusterTime"] = {"clusterTime": now, "signature": {"hash": b"\0" * 20, "keyId": 0}}
        request.replies(reply)
        return True

    def _run(self, name: str, body: Document) -> Document:
        handler = _COMMANDS.get(name)
        if handler is None:
            raise NotImplementedError(f"no such command: {name!r}")
        failure = self._fail_point(name, body)
        if failure is not None:
            if failure.close_connection:
                raise _Hangup
            if failure.code is not None:
                raise CommandError(failure.code, f"failCommand fail point on {name}", failure.labels)
        key = _transaction_key(body)
        if key is not None and "autocommit" not in body and name in _WRITES:
            reply = self._retryable(key, lambda: handler(self, body))
        else:
            reply = handler(self, body)
        if failure is not None and failure.write_concern_error is not None:
            reply["writeConcernError"] = dict(failure.write_concern_error)
        return reply

    def _fail_point(self, name: str, body: Document) -> FailPoint | None:
        with self.lock:
            for point in self._fail_points:
                if point.applies(name, body):
                    point.times -= 1
                    if point.times <= 0:
                        self._fail_points.remove(point)
                    return point
        return None

    def _retryable(self, key: tuple[bytes, int], run: Callable[[], Document]) -> Document:
        """A retryable write sent again under its transaction number gets the first answer."""
        with self.lock:
            done = self._sessions.retried.get(key)
        if done is not None:
            return dict(done)
        reply = run()
        with self.lock:
            self._sessions.retried[key] = dict(reply)
        return reply

    # -- where a command reads and writes ----------------------------------------

    def _target(self, body: Document, collection: str) -> FakeMongo:
        """The engine, or the view of the transaction the command runs in."""
        key = _transaction_key(body)
        if key is None or body.get("autocommit") is not False:
            return self.engine
        with self.lock:
            if body.get("startTransaction"):
                self._sessions.transactions[key] = Transaction(self.engine)
            transaction = self._sessions.transactions.get(key)
        if transaction is None:
            raise CommandError(
                NO_SUCH_TRANSACTION, f"Transaction {key[1]} has been aborted or never started", [TRANSIENT]
            )
        if _command_of(body) in _WRITES:
            transaction.writes.append(body)
        return transaction.touch(collection)

    def _wait_for_majority(self, body: Document) -> None:
        """A causally consistent majority read waits for the majority point to pass its afterClusterTime."""
        concern = body.get("readConcern") or {}
        after = concern.get("afterClusterTime")
        if after is None or concern.get("level") != "majority":
            return
        deadline = time.monotonic() + CAUSAL_WAIT
        with self.lock:
            if (through := self.engine.majority_through) is not None and through < position_of(after):
                self.reads_waited += 1
            while (through := self.engine.majority_through) is not None and through < position_of(after):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError("a read's afterClusterTime was never majority-committed")
                self.lock.wait(remaining)

    def _hidden(self, body: Document, collection: str) -> set[Any]:
        """The documents a majority read does not see yet: inserted after the majority point."""
        through = self.engine.majority_through
        if through is None or (body.get("readConcern") or {}).get("level") != "majority":
            return set()
        return {
            hashable(e.key)
            for e in self.engine.oplog
            if e.collection == collection and e.operation == "insert" and e.position > through
        }

    def _outgoing(self, collection: str, document: Mapping[str, Any]) -> Mapping[str, Any]:
        """A document as the server sends it: the bytes it was stored as, when it was stored raw."""
        raw = self._raw.get((collection, hashable(document.get("_id"))))
        return document if raw is None else RawBSONDocument(raw)

    # -- the commands ------------------------------------------------------------

    def hello(self, body: Document) -> Document:
        with self.lock:
            election = self._election
        reply: Document = {
            "isWritablePrimary": True,
            "ismaster": True,
            "helloOk": True,
            "setName": SET_NAME,
            "setVersion": 1,
            "electionId": election,
            "hosts": [self.address],
            "primary": self.address,
            "me": self.address,
            "maxBsonObjectSize": MAX_BSON_BYTES,
            "maxMessageSizeBytes": 48_000_000,
            "maxWriteBatchSize": 100_000,
            "localTime": datetime.now(UTC),
            "logicalSessionTimeoutMinutes": 30,
            "connectionId": 1,
            "minWireVersion": 0,
            "maxWireVersion": WIRE_VERSION,
            "readOnly": False,
        }
        if self.standalone:
            for member_only in ("setName", "setVersion", "electionId", "hosts", "primary", "me"):
                del reply[member_only]
        return reply

    def ok(self, body: Document) -> Document:
        return {}

    def build_info(self, body: Document) -> Document:
        return {"version": "6.0.14", "versionArray": [6, 0, 14, 0], "maxBsonObjectSize": MAX_BSON_BYTES}

    def insert(self, body: Document) -> Document:
        collection = body["insert"]
        target = self._target(body, collection)
        documents = body.get("documents", [])
        try:
            target.database[collection].insert_many(documents, ordered=body.get("ordered", True))
        except BulkWriteError as error:
            errors = [_write_error(e) for e in error.details["writeErrors"]]
            return {"n": error.details["nInserted"], "writeErrors": errors}
        return {"n": len(documents)}

    def update(self, body: Document) -> Document:
        collection = body["update"]
        target = self._target(body, collection)
        n = modified = 0
        upserted: list[Document] = []
        errors: list[Document] = []
        for index, statement in enumerate(body.get("updates", [])):
            if statement.get("multi") or not isinstance(statement["u"], Mapping):
                raise NotImplementedError("updates with multi, or by pipeline")
            change = statement["u"]
            write = (
                target.database[collection].update_one
                if any(k.startswith("$") for k in change)
                else target.database[collection].replace_one
            )
            try:
                result = write(statement["q"], change, upsert=bool(statement.get("upsert")))
            except DuplicateKeyError as error:
                errors.append({"index": index, **_write_error(error.details or {})})
                if body.get("ordered", True):
                    break
                continue
            if result.upserted_id is not None:
                upserted.append({"index": index, "_id": result.upserted_id})
                n += 1
            else:
                n += result.matched_count
                modified += result.matched_count
        reply: Document = {"n": n, "nModified": modified}
        if upserted:
            reply["upserted"] = upserted
        if errors:
            reply["writeErrors"] = errors
        return reply

    def delete(self, body: Document) -> Document:
        collection = body["delete"]
        target = self._target(body, collection)
        n = 0
        for statement in body.get("deletes", []):
            while target.database[collection].delete_one(statement["q"]).deleted_count:
                n += 1
                if statement.get("limit", 0) == 1:
                    break
        return {"n": n}

    def find(self, body: Document) -> Document:
        collection = body["find"]
        target = self._target(body, collection)
        self._wait_for_majority(body)
        with self.lock:
            hidden = self._hidden(body, collection)
            found = [
                self._outgoing(collection, d) if not body.get("projection") else d
                for d in target.database[collection].find(
                    body.get("filter"), body.get("projection"), sort=list((body.get("sort") or {}).items())
                )
                if hashable(d.get("_id")) not in hidden
            ]
        found = found[body.get("skip", 0) :]
        if body.get("limit"):
            found = found[: abs(body["limit"])]
        cursor = Cursor(f"{self.engine.name}.{collection}", collection, documents=iter(found))
        single = bool(body.get("singleBatch") or body.get("limit", 0) < 0)
        return self._first_batch(cursor, body.get("batchSize", 101), keep=not single)

    def aggregate(self, body: Document) -> Document:
        collection = body["aggregate"]
        pipeline = body.get("pipeline", [])
        if pipeline and "$changeStream" in pipeline[0]:
            if self.standalone:
                raise CommandError(40573, "The $changeStream stage is only supported on replica sets")
            return self._watch(body, collection, pipeline[0]["$changeStream"], pipeline[1:])
        target = self._target(body, collection)
        self._wait_for_majority(body)
        with self.lock:
            hidden = self._hidden(body, collection)
            documents = [
                d for d in target.database[collection].find() if hashable(d.get("_id")) not in hidden
            ]
        for stage in pipeline:
            ((operator, argument),) = stage.items()
            if operator == "$match":
                documents = [d for d in documents if matches(d, argument)]
            elif operator == "$skip":
                documents = documents[argument:]
            elif operator == "$limit":
                documents = documents[:argument]
            elif operator == "$group" and set(argument) == {"_id", "n"} and argument["n"] == {"$sum": 1}:
                documents = [{"_id": argument["_id"], "n": len(documents)}] if documents else []
            else:
                raise NotImplementedError(f"aggregation stage {operator} {argument}")
        cursor = Cursor(f"{self.engine.name}.{collection}", collection, documents=iter(documents))
        return self._first_batch(cursor, (body.get("cursor") or {}).get("batchSize", 101), keep=True)

    def _watch(self, body: Document, collection: str, options: Document, stages: list[Document]) -> Document:
        for stage in stages:
            if not set(stage) <= {"$match", "$project"}:
                raise NotImplementedError(f"change stream stage {stage}")
        token = options.get("resumeAfter") or options.get("startAfter")
        for option, allowed in _IMAGE_OPTIONS.items():
            if options.get(option, allowed[0]) not in allowed:
                raise CommandError(
                    2, f"Enumeration value '{options[option]}' for field '{option}' is not a valid value."
                )
        with self.lock:
            if token is not None:
                position = _position_of_token(token)
                invalidated = any(
                    e.position == position and e.operation == "invalidate" for e in self.engine.oplog
                )
                if invalidated and "resumeAfter" in options:
                    raise CommandError(
                        260,
                        "Attempting to resume a change stream using 'resumeAfter' is not allowed "
                        "from an invalidate notification.",
                    )
            try:
                stream = self.engine.database[collection].watch(
                    stages,
                    full_document=options.get("fullDocument"),
                    full_document_before_change=options.get("fullDocumentBeforeChange"),
                    resume_after=token,
                    start_at_operation_time=options.get("startAtOperationTime"),
                )
            except OperationFailure as error:
                raise CommandError(error.code or 1, str(error), [NON_RESUMABLE]) from error
        cursor = Cursor(f"{self.engine.name}.{collection}", collection, stream=stream)
        if self._merge_holds(collection):
            cursor.answered_token = stream.resume_token  # its start
            return self._held_reply(cursor, self._keep(cursor), first=True)
        batch_size = (body.get("cursor") or {}).get("batchSize", 101)
        return self._stream_reply(cursor, batch_size, wait=0.0, first=True)

    def _merge_holds(self, collection: str) -> bool:
        """Whether this reply of a stream on ``collection`` is one ``merge_lags`` holds back."""
        with self.lock:
            held = self._merges_held[collection] > 0
            if held:
                self._merges_held[collection] -= 1
        return held

    def _held_reply(self, cursor: Cursor, cursor_id: int, *, first: bool) -> Document:
        """No change, and the post-batch token of the reply before (of its start, for a first)."""
        batch = "firstBatch" if first else "nextBatch"
        token = cursor.answered_token
        return {"cursor": {"id": cursor_id, "ns": cursor.namespace, batch: [], "postBatchResumeToken": token}}

    def get_more(self, body: Document) -> Document:
        with self.lock:
            cursor = self._cursors.get(body["getMore"])
        if cursor is None:
            raise CommandError(43, f"cursor id {body['getMore']} not found")
        batch_size = body.get("batchSize") or 101
        if cursor.stream is not None:
            if self._merge_holds(cursor.collection):
                return self._held_reply(cursor, body["getMore"], first=False)
            wait = min(body.get("maxTimeMS", 1000) / 1000, AWAIT_CAP)
            return self._stream_reply(cursor, batch_size, wait=wait, first=False, cursor_id=body["getMore"])
        return self._next_batch(cursor, batch_size, body["getMore"])

    def kill_cursors(self, body: Document) -> Document:
        with self.lock:
            for number in body.get("cursors", []):
                cursor = self._cursors.pop(number, None)
                if cursor is not None and cursor.stream is not None:
                    cursor.stream.close()
        return {"cursorsKilled": body.get("cursors", [])}

    def create_indexes(self, body: Document) -> Document:
        collection = body["createIndexes"]
        shard_key = self._shard_keys.get(collection)
        for index in body.get("indexes", []):
            keys = list(index["key"].items())
            prefix = [name for name, _ in keys[: len(shard_key or {})]]
            if index.get("unique") and shard_key and prefix != list(shard_key):
                raise CommandError(
                    67,
                    f"cannot create unique index over {index['key']} with shard key pattern {shard_key}",
                )
            options = {k: v for k, v in index.items() if k in ("name", "unique", "expireAfterSeconds")}
            try:
                self.engine.database[collection].create_index(keys, **options)
            except OperationFailure as error:
                raise CommandError(error.code or 1, str(error)) from error
        return {"numIndexesAfter": len(self.engine.collection_data(collection).indexes)}

    def list_indexes(self, body: Document) -> Document:
        collection = body["listIndexes"]
        indexes = list(self.engine.database[collection].list_indexes())
        cursor = Cursor(f"{self.engine.name}.{collection}", collection, documents=iter(indexes))
        return self._first_batch(cursor, 101, keep=False)

    def create(self, body: Document) -> Document:
        name = body["create"]
        with self.lock:
            if name in self.engine.data:  # MongoDB 6.0; from 7.0 the same options answer ok
                raise CommandError(48, f"Collection {self.engine.name}.{name} already exists.")
            data = self.engine.collection_data(name)
            data.pre_and_post_images = bool((body.get("changeStreamPreAndPostImages") or {}).get("enabled"))
        return {}

    def coll_mod(self, body: Document) -> Document:
        """Of collMod's options, ``changeStreamPreAndPostImages`` alone is modelled:
        any other fails the test."""
        command = {
            k: v for k, v in body.items() if not k.startswith("$") and k not in ("lsid", "writeConcern")
        }
        try:
            return self.engine.database.command(command)
        except OperationFailure as error:
            failure = CommandError(error.code or 1, (error.details or {}).get("errmsg", str(error)))
            failure.reply["codeName"] = (error.details or {}).get("codeName", "")
            raise failure from error

    def list_collections(self, body: Document) -> Document:
        with self.lock:
            names = sorted(self.engine.data)
        described: list[Document] = [
            {"name": name, "type": "collection"}
            if body.get("nameOnly")
            else {
                "name": name,
                "type": "collection",
                "options": {},
                "info": {"readOnly": False},
                "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"},
            }
            for name in names
        ]
        listed = [d for d in described if matches(d, body.get("filter") or {})]
        cursor = Cursor(f"{self.engine.name}.$cmd.listCollections", "", documents=iter(listed))
        return self._first_batch(cursor, (body.get("cursor") or {}).get("batchSize", 101), keep=True)

    def drop(self, body: Document) -> Document:
        self.engine.database[body["drop"]].drop()
        return {}

    def rename_collection(self, body: Document) -> Document:
        source = body["renameCollection"].split(".", 1)[1]
        destination = body["to"].split(".", 1)[1]
        with self.lock:
            self.engine.data[destination] = self.engine.data.pop(source)
            self.engine.append(source, "rename")
            self.engine.append(source, "invalidate")
        return {}

    def commit_transaction(self, body: Document) -> Document:
        key = _transaction_key(body)
        assert key is not None
        with self.lock:
            if key in self._sessions.committed:
                return {}  # a commit retried after its answer was lost
            transaction = self._sessions.transactions.pop(key, None)
            if transaction is None:
                raise CommandError(NO_SUCH_TRANSACTION, "no such transaction to commit", [TRANSIENT])
            conflict = transaction.conflict()
            if conflict is not None:
                raise CommandError(WRITE_CONFLICT, f"Write conflict on {conflict}", [TRANSIENT])
            for write in transaction.writes:
                _COMMANDS[_command_of(write)](self, {k: v for k, v in write.items() if k != "autocommit"})
            self._sessions.committed.add(key)
        return {}

    def abort_transaction(self, body: Document) -> Document:
        key = _transaction_key(body)
        with self.lock:
            self._sessions.transactions.pop(key, None)  # type: ignore[arg-type]
        return {}

    # -- cursors -------------------------------------------------------------------

    def _first_batch(self, cursor: Cursor, batch_size: int, *, keep: bool) -> Document:
        reply = self._next_batch(cursor, batch_size or 101, 0, first=True)
        if keep and reply["cursor"]["id"]:
            return reply
        reply["cursor"]["id"] = 0
        return reply

    def _next_batch(
        self, cursor: Cursor, batch_size: int, cursor_id: int, *, first: bool = False
    ) -> Document:
        assert cursor.documents is not None
        batch: list[Any] = []
        size = 0
        exhausted = False
        while len(batch) < batch_size:
            document = next(cursor.documents, None)
            if document is None:
                exhausted = True
                break
            batch.append(document)
            size += _size(document)
            if size >= MAX_BSON_BYTES:
                break
        number = 0 if exhausted else (cursor_id or self._keep(cursor))
        if exhausted and cursor_id:
            with self.lock:
                self._cursors.pop(cursor_id, None)
        field_name = "firstBatch" if first else "nextBatch"
        return {"cursor": {"id": number, "ns": cursor.namespace, field_name: batch}}

    def _keep(self, cursor: Cursor) -> int:
        number = next(self._cursor_ids)
        with self.lock:
            self._cursors[number] = cursor
        return number

    def _stream_reply(
        self, cursor: Cursor, batch_size: int, *, wait: float, first: bool, cursor_id: int = 0
    ) -> Document:
        """What a change stream's cursor has, up to ``batch_size`` changes and 16 MB,
        waiting up to ``wait`` for the first; a change over 16 MB fails the command."""
        assert cursor.stream is not None
        stream = cursor.stream
        batch: list[Any] = []
        size = 0
        deadline = time.monotonic() + wait
        with self.lock:
            while len(batch) < batch_size:
                change = cursor.held
                cursor.held = None
                if change is None:
                    try:
                        change = stream.poll()
                    except OperationFailure as error:
                        raise CommandError(error.code or 1, str(error), [NON_RESUMABLE]) from None
                if change is None:
                    remaining = deadline - time.monotonic()
                    if batch or not stream.alive or remaining <= 0:
                        break
                    self.lock.wait(remaining)
                    continue
                if "fullDocument" in change and isinstance(change["fullDocument"], Mapping):
                    change["fullDocument"] = self._outgoing(cursor.collection, change["fullDocument"])
                change_size = _size(change)
                if change_size > MAX_BSON_BYTES or size + change_size > MAX_BSON_BYTES:
                    cursor.held = change
                    if batch:
                        break
                    raise CommandError(
                        10334,
                        f"Executor error during getMore :: caused by :: BSONObj size: {change_size} "
                        f"is invalid. Size must be between 0 and 16793600(16MB)",
                    )
                batch.append(change)
                size += change_size
                cursor.sent_token = change["_id"]
            token = cursor.sent_token if cursor.held is not None else stream.resume_token
            cursor.answered_token = token
            alive = stream.alive or cursor.held is not None
        number = cursor_id or (self._keep(cursor) if alive else 0)
        if not alive and cursor_id:
            with self.lock:
                self._cursors.pop(cursor_id, None)
            number = 0
        field_name = "firstBatch" if first else "nextBatch"
        return {
            "cursor": {"id": number, "ns": cursor.namespace, field_name: batch, "postBatchResumeToken": token}
        }


class _Hangup(Exception):
    """Close the connection without answering."""


def _plain(value: Any) -> Any:
    """mockupdb's ordered dicts as the plain dicts the engine keeps."""
    if isinstance(value, SON | dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _size(document: Any) -> int:
    return len(document.raw) if isinstance(document, RawBSONDocument) else len(bson.encode(document))


def _write_error(error: Mapping[str, Any]) -> Document:
    return {k: v for k, v in error.items() if k in ("index", "code", "errmsg", "keyPattern", "keyValue")}


def _transaction_key(body: Document) -> tuple[bytes, int] | None:
    session = body.get("lsid")
    if session is None or "txnNumber" not in body:
        return None
    return (bytes(session["id"]), int(body["txnNumber"]))


def _position_of_token(token: Mapping[str, Any]) -> int:
    position = position_of_token(token)
    if position is None:
        raise CommandError(260, "invalid resume token")
    return position


def _watches(body: Document) -> bool:
    pipeline = body.get("pipeline") if "aggregate" in body else None
    return isinstance(pipeline, list) and bool(pipeline) and "$changeStream" in pipeline[0]


def _command_of(body: Document) -> str:
    return next(iter(body))


_WRITES = frozenset({"insert", "update", "delete"})
# A change stream's image options, and the values MongoDB 6.0 takes (the first: the default).
_IMAGE_OPTIONS = {
    "fullDocument": ("default", "updateLookup", "whenAvailable", "required"),
    "fullDocumentBeforeChange": ("off", "whenAvailable", "required"),
}
_COMMANDS: dict[str, Callable[[WireMongo, Document], Document]] = {
    "hello": WireMongo.hello,
    "isMaster": WireMongo.hello,
    "ismaster": WireMongo.hello,
    "ping": WireMongo.ok,
    "endSessions": WireMongo.ok,
    "buildInfo": WireMongo.build_info,
    "buildinfo": WireMongo.build_info,
    "insert": WireMongo.insert,
    "update": WireMongo.update,
    "delete": WireMongo.delete,
    "find": WireMongo.find,
    "aggregate": WireMongo.aggregate,
    "getMore": WireMongo.get_more,
    "killCursors": WireMongo.kill_cursors,
    "createIndexes": WireMongo.create_indexes,
    "listIndexes": WireMongo.list_indexes,
    "create": WireMongo.create,
    "collMod": WireMongo.coll_mod,
    "listCollections": WireMongo.list_collections,
    "drop": WireMongo.drop,
    "renameCollection": WireMongo.rename_collection,
    "commitTransaction": WireMongo.commit_transaction,
    "abortTransaction": WireMongo.abort_transaction,
}
