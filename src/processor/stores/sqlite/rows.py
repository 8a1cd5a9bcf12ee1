"""Values as the embedded store writes them, and back: times as sortable text, jobs as rows."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import fields
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from processor.models import DispatchJob

JOB_COLUMNS = tuple(field.name for field in fields(DispatchJob))
_TIME_COLUMNS = tuple(n for n, f in enumerate(fields(DispatchJob)) if "datetime" in str(f.type))
INSERT_JOB = (
    f"INSERT OR IGNORE INTO dispatch_jobs ({', '.join(JOB_COLUMNS)}, event_seq) "
    f"VALUES ({', '.join('?' * (len(JOB_COLUMNS) + 1))})"
)


@lru_cache(maxsize=4096)
def timestamp(moment: datetime) -> str:
    """One fixed-width UTC format (``2025-03-01T12:00:00.000000Z``), so that stored
    times also sort as text; ``isoformat`` pads every year to four digits, where
    ``strftime`` does not, and takes two thirds of the time.

    Memoized: a batch's jobs share one ``now`` (twice each), and formatting was
    the largest Python cost of writing a job. Equal datetimes are the same instant."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").removesuffix("+00:00") + "Z"


@lru_cache(maxsize=4096)  # events inserted together share their received_at
def parse_timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def job_from_row(row: tuple[Any, ...]) -> DispatchJob:
    """A row of ``dispatch_jobs`` as the job it was written from (``job_row`` undone)."""
    values = list(row)
    for n in _TIME_COLUMNS:
        if values[n] is not None:
            values[n] = parse_timestamp(values[n])
    return DispatchJob(*values)


def job_row(job: DispatchJob, event_seq: int | None) -> tuple[Any, ...]:
    """The job as a row of ``INSERT_JOB``: its fields in order, times as text,
    then its event's seq. Spelled out: two jobs per event pass through here,
    and a generic conversion took twice as long."""
    return (
        job.id,
        job.event_id,
        job.subscription_id,
        job.client_id,
        job.status,
        job.target,
        job.pool_code,
        timestamp(job.scheduled_at),
        job.attempts,
        sql_value(job.last_attempt_at),
        job.last_error,
        timestamp(job.created_at),
        event_seq,
    )


def sql_value(value: object) -> object:
    """Times as text in the one format that also sorts; the rest as it is."""
    return timestamp(value) if isinstance(value, datetime) else value


def _utf8_or_bytes(value: bytes) -> str | bytes:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value


def as_text(value: object) -> str:
    """A key as text, whatever a row written around the API holds."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@contextmanager
def texts_as_found(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Reads on ``connection`` where a text that is not UTF-8 (a row written
    around the API) comes back as its bytes, for validation to refuse with a
    reason, instead of failing the whole read: one bad subscription must not
    keep the processor, or an operator, from all the others."""
    connection.text_factory = _utf8_or_bytes
    try:
        yield connection
    finally:
        connection.text_factory = str


def decode_subscription_row(document: dict[str, Any]) -> dict[str, Any]:
    """A stored or logged row as the subscription contract expects it; what cannot
    be converted is passed on as is, for validation to reject with a reason."""
    if document.get("active") in (0, 1):
        document["active"] = bool(document["active"])
    if isinstance(document.get("filters"), str):
        with suppress(ValueError):
            document["filters"] = json.loads(document["filters"])
    if document.get("filters") is None:
        document.pop("filters", None)
    return document
