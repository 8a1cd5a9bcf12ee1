"""The data contract: events, subscriptions and their filters, dispatch jobs.

One definition for every store and for the HTTP API. Field names are the spec's,
in snake_case. Validation errors name the field and the problem (pydantic's
``loc`` and message), so a bad document can be dead-lettered with a reason a
person can act on, and a bad request gets a 4xx that says what to fix.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StrictBool,
    StrictStr,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
)

from fastmatch import validate_event_type, validate_pattern
from processor.filters import EventFilters
from processor.targets import MAX_TARGET_LENGTH, checked_target

PENDING: Final = "PENDING"
MAX_ID_LENGTH = 256
MAX_TEXT_LENGTH = 1000  # characters of a subscription's name or pool code
MAX_SEGMENT_LENGTH = 256  # characters of one segment of a pattern
MAX_DEAD_LETTER_RAW = 64 * 1024  # bytes of an invalid event's raw document a dead letter keeps


def _utc(moment: datetime) -> datetime:
    # Naive times are UTC: that is what MongoDB drivers and SQLite's clock give.
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-01:00 is in year 10000 in UTC
        raise ValueError("is outside the range of UTC times (years 1 to 9999)") from None


_NUMBER = re.compile(r"\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*\Z")


def _time_input(value: object) -> object:
    """A time is a date or its text; pydantic would also read bytes and numbers,
    even as text (as Unix time), which no store or client means as a time."""
    if isinstance(value, str):
        if _NUMBER.match(value):
            raise ValueError("must be a time (RFC 3339 text), not a number")
        return value
    if isinstance(value, datetime):
        return value
    raise ValueError(f"must be a time (RFC 3339 text), not {type(value).__name__}")


def _visible(text: str) -> str:
    if not _VISIBLE.search(text):
        raise ValueError("is only whitespace; give it a visible name")
    return text


def _short_segments(pattern: str) -> str:
    for position, segment in enumerate(pattern.split(":"), start=1):
        if len(segment) > MAX_SEGMENT_LENGTH:
            raise ValueError(
                f"segment {position} is {len(segment)} characters long; "
                f"at most {MAX_SEGMENT_LENGTH} are allowed"
            )
    return pattern


# Not whitespace as JSON Schema (ECMAScript) counts it, so that the validator
# and the document's pattern agree character for character.
VISIBLE = r"[^\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
_VISIBLE = re.compile(VISIBLE)
SEGMENT = r"[A-Za-z0-9_.\-]"
# JSON Schema for the constrained strings, so that a schema-driven client writes
# valid ones; the validators above each say what is wrong when one is not.
EVENT_TYPE_SCHEMA = {"type": "string", "pattern": rf"^{SEGMENT}+(:{SEGMENT}+){{3}}$"}
PATTERN_SCHEMA = {
    "type": "string",
    "pattern": rf"^({SEGMENT}{{1,{MAX_SEGMENT_LENGTH}}}|\*)(:({SEGMENT}{{1,{MAX_SEGMENT_LENGTH}}}|\*)){{3}}$",
}
TARGET_SCHEMA = {
    "type": "string",
    "maxLength": MAX_TARGET_LENGTH,
    # Every URL of this form is accepted under the default policy; other valid
    # forms are too (IP literals, user info, international names, any path),
    # as the description says.
    "pattern": r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z][A-Za-z0-9\-]*(\.[A-Za-z][A-Za-z0-9\-]*)*(:[1-9][0-9]{0,3})?"
    r"(/[A-Za-z0-9._~\-]*)*$",
    "description": "an http:// or https:// URL with a host, without spaces or control characters; "
    "stored in normal form; FC_TARGET_POLICY decides which hosts are allowed",
}
TEXT_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_LENGTH, "pattern": VISIBLE}


Text = Annotated[
    StrictStr,
    StringConstraints(min_length=1, max_length=MAX_TEXT_LENGTH),
    AfterValidator(_visible),
    WithJsonSchema(TEXT_SCHEMA),
]
Identifier = Annotated[StrictStr, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH)]
# fastmatch's InvalidPattern is a ValueError, which pydantic reports as the field's error.
EventType = Annotated[StrictStr, AfterValidator(validate_event_type), WithJsonSchema(EVENT_TYPE_SCHEMA)]
Pattern = Annotated[
    StrictStr,
    AfterValidator(validate_pattern),
    AfterValidator(_short_segments),
    WithJsonSchema(PATTERN_SCHEMA),
]
Url = Annotated[StrictStr, AfterValidator(checked_target), WithJsonSchema(TARGET_SCHEMA)]
UtcTime = Annotated[datetime, BeforeValidator(_time_input), AfterValidator(_utc)]


class Event(BaseModel):
    """An event as its publisher inserted it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: Identifier
    type: EventType
    client_id: Identifier
    source: StrictStr | None = None
    time: UtcTime
    # Every store hands over ``data`` and ``metadata`` decoded from JSON (SQLite's
    # text, MongoDB's Extended JSON), so they are JSON by construction: checking
    # the tree again would cost more than the rest of the event.
    data: Any = None
    metadata: dict[str, Any] | None = None
    subject: StrictStr | None = None
    correlation_id: StrictStr | None = None
    causation_id: StrictStr | None = None


class SubscriptionFields(BaseModel):
    """A subscription as a client writes it; the store gives it its ``id``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: Identifier
    name: Text
    event_type_pattern: Pattern
    target: Url
    pool_code: Text
    active: StrictBool = True
    filters: EventFilters | None = None


class Subscription(SubscriptionFields):
    """A stored subscription."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: Identifier


class SubscriptionPatch(BaseModel):
    """A partial update; fields left out keep their value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Text | None = None
    event_type_pattern: Pattern | None = None
    target: Url | None = None
    pool_code: Text | None = None
    active: StrictBool | None = None
    filters: EventFilters | None = None


@dataclass(slots=True)
class DispatchJob:
    """Exactly the spec's fields; ``id`` is a function of the event and the subscription.

    Not frozen: a frozen dataclass takes several times longer to build, and two
    are built per event in the hot loop."""

    id: str
    event_id: str
    subscription_id: str
    client_id: str
    status: str
    target: str
    pool_code: str
    scheduled_at: datetime
    attempts: int
    last_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event the processor could not accept, kept with the reason.

    ``raw`` is the document as stored, as text, cut to its first
    ``MAX_DEAD_LETTER_RAW`` bytes, so that a dead letter can always be written
    whatever the event's size; ``raw_bytes`` and ``raw_sha256`` describe the
    whole of it."""

    position: str  # where the event stands in its store's feed
    event_id: str | None
    reason: str
    raw: str
    received_at: datetime
    raw_bytes: int
    raw_sha256: str

    @classmethod
    def of(
        cls, position: str, event_id: str | None, reason: str, raw: Iterable[str], received_at: datetime
    ) -> DeadLetter:
        """The dead letter of a document given as pieces of its raw text, which
        are read once and never held together."""
        digest = hashlib.sha256()
        kept: list[str] = []
        room = MAX_DEAD_LETTER_RAW
        size = 0
        for piece in raw:
            data = piece.encode("utf-8", "surrogatepass")
            digest.update(data)
            size += len(data)
            if room > 0:
                kept.append(piece if len(data) <= room else data[:room].decode("utf-8", "ignore"))
                room -= len(data)
        return cls(position, event_id, reason, "".join(kept), received_at, size, digest.hexdigest())


@dataclass(frozen=True, slots=True)
class FilterFailure:
    """A subscription whose filter could not be evaluated on an event: the pair
    counts as not matched, and is kept so that it can be driven again."""

    event_id: str
    subscription_id: str
    client_id: str
    reason: str
    failed_at: datetime


class InvalidEvent(ValueError):
    """A stored document that does not satisfy the event contract.

    ``kind`` is short and stable, for a metric label: ``undecodable``, or
    ``invalid_`` and the first faulty field.
    """

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.kind = kind


def describe(error: ValidationError) -> str:
    """One line naming each faulty field and what is wrong with it."""
    problems = []
    for detail in error.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in detail["loc"]) or "document"
        problems.append(f"{field}: {detail['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)


# Event.model_validate minus its wrapper, which added a quarter to validating each event.
_validate_event: Callable[[dict[str, Any]], Event] = Event.__pydantic_validator__.validate_python


def parse_event(document: dict[str, Any], received_at: datetime) -> Event:
    """Validate a stored document as an event; ``time`` defaults to ``received_at``
    (set in ``document``, which the store made for this call)."""
    if document.get("time") is None:
        document["time"] = received_at
    try:
        return _validate_event(document)
    except ValidationError as error:
        first = error.errors(include_url=False, include_input=False)[0]["loc"]
        raise InvalidEvent(describe(error), f"invalid_{first[0] if first else 'document'}") from None
