"""What the API answers, as models for its OpenAPI document.

The routes return plain dicts built by the catalog; these models describe them
(and are held to it by the schemathesis run in the tests), so that a client
generated from ``/openapi.json`` reads every answer."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from processor.models import Subscription


class FieldProblem(BaseModel):
    field: str = Field(description="where, as `filters.payload[0].path` or `[2].type`; `body` for the whole")
    problem: str


class ErrorBody(BaseModel):
    """Every response that is not 2xx."""

    error: str = Field(description="what went wrong, in one line")
    fields: list[FieldProblem] = Field(description="the fields at fault; empty when none is")


class Published(BaseModel):
    ids: list[str] = Field(description="the events' ids, in the order they were sent")


class InvalidSubscriptionDocument(BaseModel):
    """A stored subscription that breaks the contract (written around the API):
    its columns as stored, and why it is invalid. The processor ignores it."""

    model_config = ConfigDict(extra="allow")

    id: str
    invalid: str = Field(description="why the stored subscription is invalid")


SubscriptionDocument = Subscription | InvalidSubscriptionDocument


class SubscriptionList(BaseModel):
    items: list[SubscriptionDocument]


class DispatchJobDocument(BaseModel):
    id: str
    event_id: str
    subscription_id: str
    client_id: str
    status: str
    target: str
    pool_code: str
    scheduled_at: str
    attempts: int
    last_attempt_at: str | None
    last_error: str | None
    created_at: str


class DeadLetterDocument(BaseModel):
    position: str = Field(description="where the event stands in the store's feed")
    event_id: str | None
    reason: str
    raw: str = Field(description="the document as stored, as text, cut to its first 64 KiB")
    raw_bytes: int
    raw_sha256: str
    received_at: str
    created_at: str


class FilterFailureDocument(BaseModel):
    event_id: str
    subscription_id: str
    client_id: str
    reason: str
    failed_at: str


class JobPage(BaseModel):
    items: list[DispatchJobDocument]
    next: int | None = Field(description="pass as `after` for the next page; null on the last one")


class DeadLetterPage(BaseModel):
    items: list[DeadLetterDocument]
    next: int | None


class FilterFailurePage(BaseModel):
    items: list[FilterFailureDocument]
    next: int | None


class JobSummary(BaseModel):
    id: str
    subscription_id: str
    status: str


class RecentEventDocument(BaseModel):
    position: int = Field(description="where the event stands in the store's feed")
    id: str | None
    type: str | None
    client_id: str | None
    source: str | None
    time: str | None
    received_at: str | None
    jobs: list[JobSummary] = Field(description="the first 100 jobs made of it so far")
    jobs_total: int


class RecentEventPage(BaseModel):
    items: list[RecentEventDocument]
    next: int | None = Field(description="pass as `before` for older events; null on the last page")


class ExplainedEvent(BaseModel):
    id: str | None = Field(description="null for an event typed, not stored")
    type: str
    client_id: str
    stored: bool


class VerdictDocument(BaseModel):
    subscription_id: str
    name: str | None
    matches: bool
    field: str | None = Field(
        description="the part that refused the event: `active`, `event_type_pattern`, `filters.source`, "
        "`filters.metadata.<key>`, `filters.payload[i]`, `filters` or `subscription` (invalid)"
    )
    reason: str | None
    job_id: str | None = Field(description="the job a stored event becomes, when it matches")


class ExplanationDocument(BaseModel):
    event: ExplainedEvent
    subscriptions_as_of: str = Field(description="the subscriptions were read as they stood then")
    matches: int
    verdicts: list[VerdictDocument] = Field(description="one per subscription of the event's client")


class ReportDocument(BaseModel):
    """What a re-drive or backfill did, as the subscriptions stand now."""

    examined: int = Field(description="dead letters, filter failures or events read")
    created: int = Field(description="jobs created")
    skipped: int = Field(description="jobs that existed already")
    resolved: int = Field(description="dead letters or filter failures removed")
    left: int = Field(description="items still failing, counted by reason in `reasons`")
    reasons: dict[str, int]
    next: str | None = Field(description="pass as `after` to go on; null once the run reached the end")
    subscriptions_as_of: str
    note: str


class SubscriptionStats(BaseModel):
    jobs_created: int
    last_matched_at: str | None


class ClientStats(BaseModel):
    events: int
    jobs: int
    last_event_time: str | None


class Stats(BaseModel):
    event_types: dict[str, int]
    subscriptions: dict[str, SubscriptionStats]
    clients: dict[str, ClientStats]


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route: each status it can refuse with, in the error shape."""
    meanings = {
        404: "no such resource",
        405: "the path does not take this method",
        409: "an id is taken, or repeated within the batch; or the subscription cannot be backfilled",
        413: "the body is larger than 1 MiB",
        415: "the body is not sent as JSON",
        422: "the request breaks the contract; `fields` says where",
        500: "an unexpected error, logged under the id the message gives",
        503: "the store is busy or unavailable; try again",
    }
    return {status: {"model": ErrorBody, "description": meanings[status]} for status in (*statuses, 500)}
