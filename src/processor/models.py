"""The data contract: events, subscriptions and their filters, dispatch jobs.

One definition for every store and for the HTTP API. Field names are the spec's,
in snake_case. Validation errors name the field and the problem (pydantic's
``loc`` and message), so a bad document can be dead-lettered with a reason a
person can act on, and a bad request gets a 4xx that says what to fix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Self

from jsonpath_rfc9535 import JSONPathQuery
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    JsonValue,
    PrivateAttr,
    StrictBool,
    StrictStr,
    StringConstraints,
    Tag,
    ValidationError,
    model_validator,
)

from fastmatch import validate_event_type, validate_pattern
from processor.filters import Operator, compile_path, holds, json_equal

PENDING: Final = "PENDING"
MAX_ID_LENGTH = 256


def _http_url(text: str) -> str:
    if not text.startswith(("http://", "https://")) or len(text) <= len("https://"):
        raise ValueError("must be an http:// or https:// URL")
    return text


def _utc(moment: datetime) -> datetime:
    # Naive times are UTC: that is what MongoDB drivers and SQLite's clock give.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


Text = Annotated[StrictStr, StringConstraints(min_length=1)]
Identifier = Annotated[StrictStr, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH)]
# fastmatch's InvalidPattern is a ValueError, which pydantic reports as the field's error.
EventType = Annotated[StrictStr, AfterValidator(validate_event_type)]
Pattern = Annotated[StrictStr, AfterValidator(validate_pattern)]
Url = Annotated[StrictStr, AfterValidator(_http_url)]
UtcTime = Annotated[datetime, AfterValidator(_utc)]


def _query(expression: str) -> str:
    compile_path(expression)
    return expression


JsonPath = Annotated[StrictStr, AfterValidator(_query)]


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


class PayloadCondition(BaseModel):
    """``{"path": ..., "op": ..., "value": ...}``: true when a selected node satisfies ``op``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: JsonPath
    op: Operator
    value: JsonValue = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> Self:
        given = "value" in self.model_fields_set
        if self.op == "exists" and given:
            raise ValueError("op 'exists' takes no value")
        if self.op != "exists" and not given:
            raise ValueError(f"op {self.op!r} needs a value")
        if self.op in ("in", "nin") and not isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} needs a list as its value")
        return self


def _payload_kind(condition: Any) -> str:
    return "query" if isinstance(condition, str) else "condition"


# Tagged by its shape, so that a faulty entry is reported against the one form it
# was meant to be, not against both.
PayloadFilter = Annotated[
    Annotated[PayloadCondition, Tag("condition")] | Annotated[JsonPath, Tag("query")],
    Discriminator(_payload_kind),
]


class EventFilters(BaseModel):
    """Every part that is present must hold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: list[StrictStr] | None = None
    metadata: dict[str, JsonValue] | None = None
    payload: list[PayloadFilter] | None = None

    _checks: list[tuple[JSONPathQuery, Operator, JsonValue]] = PrivateAttr(default_factory=list)

    def model_post_init(self, context: Any, /) -> None:
        for condition in self.payload or ():
            if isinstance(condition, str):  # a bare query holds when it selects anything
                self._checks.append((compile_path(condition), "exists", None))
            else:
                self._checks.append((compile_path(condition.path), condition.op, condition.value))

    def accept(self, event: Event) -> bool:
        if self.source is not None and event.source not in self.source:
            return False
        if self.metadata is not None:
            metadata = event.metadata or {}
            for key, expected in self.metadata.items():
                if key not in metadata or not json_equal(metadata[key], expected):
                    return False
        return all(holds(query, op, value, event.data) for query, op, value in self._checks)


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
    """An event the processor could not accept, kept whole with the reason."""

    position: str  # where the event stands in its store's feed
    event_id: str | None
    reason: str
    raw: str
    received_at: datetime


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
