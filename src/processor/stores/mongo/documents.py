"""Stored documents as the contract speaks them, and back; positions as integers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import bson
from bson import json_util
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.errors import InvalidBSON
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo.errors import PyMongoError

from processor.models import DeadLetter, DispatchJob
from processor.stores.base import (
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
