"""Stored documents as the contract speaks them, and back; positions as integers."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

import bson
from bson import json_util
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.errors import InvalidBSON
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import PyMongoError

from processor.models import DeadLetter, DispatchJob
from processor.stores.base import (
    StoreMisconfigured,
    StoreUnavailable,
)

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

DUPLICATE_KEY = 11000
NAMESPACE_EXISTS = 48
JSON = json_util.JSONOptions(json_mode=json_util.JSONMode.RELAXED, tz_aware=True)


# Documents are read as the BSON bytes the server sent and decoded one by one:
# one that pymongo cannot decode (a date beyond year 9999, invalid UTF-8, as
# other drivers may write them) fails alone, not the batch it came in.
RAW: CodecOptions[RawBSONDocument] = CodecOptions(document_class=RawBSONDocument, tz_aware=True)
_STRICT: CodecOptions[Document] = CodecOptions(tz_aware=True)
# Only to show or name a document that cannot be decoded: every byte read, nothing refused.
_LOOSE: CodecOptions[Document] = CodecOptions(
    tz_aware=True,
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,
    unicode_decode_error_handler="backslashreplace",
)
UNDECODABLE = (InvalidBSON, ValueError, OverflowError)  # what ``decode`` raises for bad bytes


def decode(raw: RawBSONDocument) -> Document:
    """A document as pymongo would have decoded it; raises one of ``UNDECODABLE``."""
    return bson.decode(raw.raw, _STRICT)


def decode_loosely(raw: RawBSONDocument | None) -> Document:
    """A document as far as its bytes can be read, whatever they hold."""
    return {} if raw is None else bson.decode(raw.raw, _LOOSE)


STANDALONE = (
    "FC_MONGO_URL names a server that serves no change stream (no operation time, or code 40573): "
    "the processor needs a replica set or a mongos"
)


def last_applied(database: Database[Any], session: ClientSession | None = None) -> Timestamp:
    """The cluster time of the last write the server applied (a ``ping`` is a
    local read: its operation time is that, not the majority point). In a
    causally consistent session, a majority read after it waits until that
    write is majority-committed."""
    reply = database.client.admin.command("ping", session=session)
    operation_time = reply.get("operationTime")
    if not isinstance(operation_time, Timestamp):
        raise StoreMisconfigured(STANDALONE)
    return operation_time


def just_after(moment: Timestamp) -> Timestamp:
    """The first cluster time after ``moment``: a stream started at a time takes its changes too."""
    return (
        Timestamp(moment.time, moment.inc + 1) if moment.inc < 0xFFFFFFFF else Timestamp(moment.time + 1, 0)
    )


def order_of(cluster_time: Timestamp) -> int:
    """A cluster time as one integer that sorts like it."""
    return (cluster_time.time << 32) | cluster_time.inc


def jsonable(value: Any) -> Any:
    """BSON values (ObjectId, dates, decimals...) as the JSON the contract speaks:
    MongoDB's relaxed Extended JSON, by the driver's own converter. Values that
    are JSON already (most of an event) are kept as they are, without the
    converter's round trip through text."""
    kind = type(value)
    if value is None or kind is str or kind is bool or kind is int:
        return value
    if kind is float and math.isfinite(value):
        return value
    if kind is dict:
        return {name: jsonable(item) for name, item in value.items()}
    if kind is list:
        return [jsonable(item) for item in value]
    return json.loads(json_util.dumps(value, json_options=JSON))


@contextmanager
def unavailable_on_failure(what: str) -> Iterator[None]:
    """Driver errors become ``StoreUnavailable``, which the loop retries with backoff."""
    try:
        yield
    except PyMongoError as error:
        raise StoreUnavailable(f"{what}: {error}") from error


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


def subscription_id(document: Document) -> str:
    return str(document.get("_id"))


def subscription_document(document: Document) -> Document:
    converted: Document = jsonable({k: v for k, v in document.items() if k != "_id"})
    converted["id"] = subscription_id(document)
    return converted


# (field, document key): the job's id is the document's _id.
_JOB_KEYS = tuple((f.name, "_id" if f.name == "id" else f.name) for f in fields(DispatchJob))


def job_document(job: DispatchJob) -> Document:
    """The job's fields, its ``id`` as the document's ``_id``. Read field by field:
    ``asdict`` deep-copies every value, and two datetimes made it most of the
    processor's cost per job."""
    return {key: getattr(job, name) for name, key in _JOB_KEYS}


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
