"""The HTTP API of ``fc-dev``: publish events, manage subscriptions, and see what
the processor made of them.

Requests are validated by the models of the data contract, so the API rejects
exactly what the processor would. Every error, whatever raised it, has one
shape: ``{"error": "<what went wrong>", "fields": [{"field": ..., "problem": ...}]}``,
``fields`` empty when no field is at fault.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any

from fastapi import Body, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, JsonValue, StrictStr, TypeAdapter, ValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from processor.health import Health
from processor.json_values import Json, JsonObject
from processor.metrics import Metrics
from processor.models import (
    EventType,
    Identifier,
    SubscriptionFields,
    SubscriptionPatch,
    UtcTime,
)
from processor.ops import add_ops_routes
from processor.stores.base import StoreUnavailable
from processor.stores.sqlite import Catalog, CorruptRecord, EventExists, Page, subscription_document

MAX_BODY_BYTES = 1024 * 1024
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
REQUEST_PARTS = ("body", "query", "path")  # where FastAPI says a faulty input came from


class NewEvent(BaseModel):
    """An event as a publisher posts it: the store can give it its ``id``, and
    the processor takes the insert time when ``time`` is left out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Identifier | None = None
    type: EventType
    client_id: Identifier
    source: StrictStr | None = None
    time: UtcTime | None = None
    data: Json = None
    metadata: JsonObject | None = None
    subject: StrictStr | None = None
    correlation_id: StrictStr | None = None
    causation_id: StrictStr | None = None


EVENT_BATCH = TypeAdapter(list[NewEvent])


class PageQuery(BaseModel):
    """Unknown parameters are refused: a misspelt filter must not quietly list everything."""

    model_config = ConfigDict(extra="forbid")

    after: int | None = Field(None, ge=0, description="the `next` of the previous page")
    limit: int = Field(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)


class FilterFailureQuery(PageQuery):
    event_id: str | None = None
    subscription_id: str | None = None


class JobQuery(PageQuery):
    event_id: str | None = None
    subscription_id: str | None = None
    client_id: str | None = None
    status: str | None = None


class SubscriptionQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client_id: str | None = None


class ApiError(Exception):
    """A refusal with its status; rendered in the one error shape."""

    def __init__(self, status: int, error: str, fields: Sequence[Mapping[str, str]] = ()) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.fields = list(fields)


def error_response(
    status: int,
    error: str,
    fields: Sequence[Mapping[str, str]] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse({"error": error, "fields": list(fields)}, status_code=status, headers=headers)


def field_name(location: Iterable[int | str]) -> str:
    """``filters.payload[0].path``, ``[2].type``: a location as a person writes it."""
    name = ""
    for part in location:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else part
    return name or "body"


def field_problems(errors: Iterable[Mapping[str, Any]], *, from_request: bool) -> list[dict[str, str]]:
    """pydantic's errors as ``{"field", "problem"}``, worded as ``models.describe`` words them."""
    problems = []
    for detail in errors:
        location = list(detail["loc"])
        if from_request and location and location[0] in REQUEST_PARTS:
            location = location[1:]
        if detail["type"] == "json_invalid":
            problem = f"is not valid JSON: {detail['ctx']['error']} at character {location.pop()}"
        else:
            problem = str(detail["msg"]).removeprefix("Value error, ")
        problems.append({"field": field_name(location), "problem": problem})
    return problems


def invalid(problems: list[dict[str, str]]) -> JSONResponse:
    summary = "; ".join(f"{problem['field']}: {problem['problem']}" for problem in problems)
    return error_response(422, f"invalid request: {summary}", problems)


def not_found(what: str, key: str) -> ApiError:
    return ApiError(404, f"no {what} with id {key!r}")


def too_large() -> JSONResponse:
    problem = f"is larger than {MAX_BODY_BYTES} bytes"
    return error_response(413, f"request body {problem}", [{"field": "body", "problem": problem}])


class BodyTooLarge(HTTPException):
    """Raised while the body is read: FastAPI lets an ``HTTPException`` through to the handlers."""

    def __init__(self) -> None:
        super().__init__(413)


class BodyLimit:
    """Refuses a body over ``MAX_BODY_BYTES`` before anything parses it: at once
    when its Content-Length says so, else as soon as the bytes read pass it.

    FastAPI's own ``max_body_size`` answers a declared length in plain text,
    whatever the handlers say; this answers in the API's error shape.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            await too_large()(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:
                raise BodyTooLarge
            return message

        await self.app(scope, counted, send)


def install_error_handlers(app: FastAPI) -> None:
    """Whatever refuses a request, the client gets the one error shape."""

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return invalid(field_problems(error.errors(), from_request=True))

    @app.exception_handler(ValidationError)
    async def model_invalid(request: Request, error: ValidationError) -> JSONResponse:
        return invalid(field_problems(error.errors(), from_request=False))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail), headers=error.headers)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, error: BodyTooLarge) -> JSONResponse:
        return too_large()

    @app.exception_handler(ApiError)
    async def refused(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.error, error.fields)

    @app.exception_handler(StoreUnavailable)
    async def unavailable(request: Request, error: StoreUnavailable) -> JSONResponse:
        return error_response(503, f"the store is busy or unavailable, try again: {error}")

    @app.exception_handler(CorruptRecord)
    async def corrupt(request: Request, error: CorruptRecord) -> JSONResponse:
        return error_response(500, str(error))


def create_app(catalog: Catalog, metrics: Metrics, health: Health, alive: Callable[[], bool]) -> FastAPI:
    """The API, with the processor's ``/health``, ``/metrics``, ``/live`` and ``/ready``
    beside it; ``alive`` says whether the processing thread runs."""
    app = FastAPI(
        title="fc-dev",
        description="The stream processor with its embedded store, for development.",
    )
    app.add_middleware(BodyLimit)
    install_error_handlers(app)
    add_ops_routes(app, metrics, health, alive)

    @app.post("/api/events", status_code=201)
    def publish(
        body: Annotated[JsonValue, Body(description="an event, or an array of events")],
    ) -> dict[str, list[str]]:
        """One event or an array of them; a batch is written whole or not at all."""
        batch = isinstance(body, list)
        events = EVENT_BATCH.validate_python(body) if batch else [NewEvent.model_validate(body)]
        try:
            return {"ids": catalog.insert_events([event.model_dump() for event in events])}
        except EventExists as error:
            field = f"[{error.index}].id" if batch else "id"
            raise ApiError(409, str(error), [{"field": field, "problem": "is taken"}]) from None

    @app.post("/api/subscriptions", status_code=201)
    def create_subscription(fields: SubscriptionFields) -> dict[str, Any]:
        return subscription_document(catalog.create_subscription(fields))

    @app.get("/api/subscriptions")
    def list_subscriptions(query: Annotated[SubscriptionQuery, Query()]) -> dict[str, list[dict[str, Any]]]:
        return {"items": [subscription_document(s) for s in catalog.subscriptions(query.client_id)]}

    @app.get("/api/subscriptions/{subscription_id}")
    def get_subscription(subscription_id: str) -> dict[str, Any]:
        subscription = catalog.subscription(subscription_id)
        if subscription is None:
            raise not_found("subscription", subscription_id)
        return subscription_document(subscription)

    @app.patch("/api/subscriptions/{subscription_id}")
    def patch_subscription(subscription_id: str, patch: SubscriptionPatch) -> dict[str, Any]:
        """Fields left out keep their value; the result must be a valid subscription."""
        subscription = catalog.update_subscription(subscription_id, patch)
        if subscription is None:
            raise not_found("subscription", subscription_id)
        return subscription_document(subscription)

    @app.delete("/api/subscriptions/{subscription_id}", status_code=204)
    def delete_subscription(subscription_id: str) -> Response:
        if not catalog.delete_subscription(subscription_id):
            raise not_found("subscription", subscription_id)
        return Response(status_code=204)

    @app.get("/api/dispatch-jobs")
    def dispatch_jobs(query: Annotated[JobQuery, Query()]) -> Page:
        return catalog.dispatch_jobs(**query.model_dump())

    @app.get("/api/dead-letters")
    def dead_letters(query: Annotated[PageQuery, Query()]) -> Page:
        return catalog.dead_letters(**query.model_dump())

    @app.get("/api/filter-failures")
    def filter_failures(query: Annotated[FilterFailureQuery, Query()]) -> Page:
        """(event, subscription) pairs whose filter failed on the event: not matched, no job."""
        return catalog.filter_failures(**query.model_dump())

    @app.get("/api/stats")
    def stats() -> dict[str, Any]:
        """Event counts by type, jobs and last match per subscription, activity per client."""
        return catalog.stats()

    return app
