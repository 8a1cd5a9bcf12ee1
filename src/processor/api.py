"""The HTTP API of ``fc-dev``: publish events, manage subscriptions, and see what
the processor made of them.

Requests are validated by the models of the data contract, so the API rejects
exactly what the processor would; bodies are validated once, from their bytes
(pydantic's JSON parser, which also bounds nesting and number size and
refuses text that is not Unicode). Every refusal has the one error shape of
``processor.http_errors``, and the OpenAPI document at ``/openapi.json``
says, for every route, its body, its answers and each status it can refuse
with.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.openapi.utils import get_openapi
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.json_schema import models_json_schema

from processor import api_documents as documents
from processor import remedies
from processor.explain import Explanation, explain_stored, explain_unsaved
from processor.health import Health
from processor.http_errors import (
    ApiError,
    BodyLimit,
    field_problems,
    install_error_handlers,
    invalid,
)
from processor.json_values import Json, JsonObject
from processor.metrics import Metrics
from processor.models import (
    MAX_ID_LENGTH,
    EventType,
    Identifier,
    InvalidEvent,
    SubscriptionFields,
    SubscriptionPatch,
    UtcTime,
)
from processor.ops import add_ops_routes
from processor.page import add_page
from processor.stores.base import Repairs
from processor.stores.sqlite import Catalog, EventExists, Page, subscription_document

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_CURSOR = 2**63 - 1  # the largest seq SQLite can hold
DEFAULT_REPAIR_ITEMS = 1000  # items one re-drive or backfill request reads: a request's time stays short
MAX_REPAIR_ITEMS = 10_000
JSON_MEDIA = re.compile(r"application/(?:[\w.\-]+\+)?json\s*(?:;|\Z)", re.IGNORECASE)
T = TypeVar("T")


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


EVENT = TypeAdapter(NewEvent)
EVENT_BATCH = TypeAdapter(list[NewEvent])
QueryId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]


class PageQuery(BaseModel):
    """Unknown parameters are refused: a misspelt filter must not quietly list everything."""

    model_config = ConfigDict(extra="forbid")

    after: int | None = Field(None, ge=0, le=MAX_CURSOR, description="the `next` of the previous page")
    limit: int = Field(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)


class FilterFailureQuery(PageQuery):
    event_id: QueryId | None = None
    subscription_id: QueryId | None = None


class JobQuery(PageQuery):
    event_id: QueryId | None = None
    subscription_id: QueryId | None = None
    client_id: QueryId | None = None
    status: Annotated[str, Field(pattern=r"^[A-Za-z_]{1,64}$")] | None = Field(
        None, description="matched in upper case, as statuses are stored: `pending` finds `PENDING`"
    )


class RecentEventQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    before: int | None = Field(None, ge=1, le=MAX_CURSOR, description="the `next` of the previous page")
    limit: int = Field(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)


class SubscriptionQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client_id: QueryId | None = None


class ExplainRequest(BaseModel):
    """The event to explain: a stored one, by id, or one typed as it would be posted."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {
                    "required": [name],
                    "properties": {name: {"type": "object" if name == "event" else "string"}},
                }
                for name in ("event_id", "event")
            ]
        },
    )

    event_id: QueryId | None = None
    event: NewEvent | None = None

    @model_validator(mode="after")
    def _one(self) -> ExplainRequest:
        if self.event_id is None and self.event is None:
            raise ValueError("give event_id (a stored event) or event (one typed)")
        if self.event_id is not None and self.event is not None:
            raise ValueError("give event_id (a stored event) or event (one typed), not both")
        return self


# fc-dev's store is SQLite, whose positions and keys are whole numbers.
Cursor = Annotated[str, Field(pattern=r"^[0-9]{1,18}$", description="the `next` of an earlier run")]


def json_number(value: object) -> object:
    """A body's number as JSON has it: ``"5"`` or ``true`` is a mistake to name,
    where pydantic would take them (``5.0`` is a whole number, as JSON Schema says)."""
    if isinstance(value, bool | str):
        raise ValueError(f"must be a JSON number, not {json.dumps(value)}")
    return value


Items = Annotated[
    int,
    Field(
        ge=1, le=MAX_REPAIR_ITEMS, description="items this request reads at most; `next` resumes after them"
    ),
    BeforeValidator(json_number),  # after the bounds: so that the schema keeps them
]


class RedriveDeadLetters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(min_length=1, max_length=1000)] | None = Field(
        None, description="only the letters whose reason contains this"
    )
    event_id: QueryId | None = None
    after: Cursor | None = None
    limit: Items = DEFAULT_REPAIR_ITEMS


class RetryFilterFailures(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subscription_id: QueryId | None = None
    event_id: QueryId | None = None
    after: Cursor | None = None
    limit: Items = DEFAULT_REPAIR_ITEMS


class Backfill(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "not": {
                "required": ["since", "after"],
                "properties": {"since": {"type": "string"}, "after": {"type": "string"}},
            }
        },
    )

    subscription_id: QueryId
    since: UtcTime | None = Field(None, description="from the first event inserted at this time or later")
    after: Cursor | None = Field(None, description="after this event position (an earlier run's `next`)")
    limit: Items = DEFAULT_REPAIR_ITEMS

    @model_validator(mode="after")
    def _one_start(self) -> Backfill:
        if self.since is not None and self.after is not None:
            raise ValueError("give since or after, not both")
        return self


def once_each(request: Request) -> None:
    """A query parameter given twice is refused: which one would count is a guess."""
    keys = [key for key, _ in request.query_params.multi_items()]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise invalid(
            [{"field": key, "problem": "is given more than once; give it once"} for key in repeated]
        )


def json_body(validate: Callable[[bytes], T], root: str) -> Callable[[Request], Awaitable[T]]:
    """A route's body, validated from its bytes by ``validate``; ``root`` says
    what the body must be, for a body that is not that at all."""

    async def parse(request: Request) -> T:
        media = request.headers.get("content-type", "")
        if not JSON_MEDIA.match(media):
            given = f"is {media!r}" if media else "is missing"
            problem = f"{given}; send the body as JSON, with content-type: application/json"
            raise ApiError(
                415,
                f"unsupported media type: content-type {problem}",
                [{"field": "content-type", "problem": problem}],
            )
        try:
            return validate(await request.body())
        except ValidationError as error:
            raise invalid(field_problems(error.errors(), from_request=False, root=root)) from None

    return parse


@dataclass(frozen=True, slots=True)
class Posted:
    events: list[NewEvent]
    array: bool  # whether they came as an array, which is how refusals name their fields


def events_of(body: bytes) -> Posted:
    """One event or an array of them; an id given twice is a conflict (409, as an
    id taken already is), naming both places."""
    if body.lstrip()[:1] != b"[":
        return Posted([EVENT.validate_json(body)], array=False)
    events = EVENT_BATCH.validate_json(body)
    first: dict[str, int] = {}
    for index, event in enumerate(events):
        if event.id is not None and first.setdefault(event.id, index) != index:
            problem = f"repeats the id of [{first[event.id]}]; the ids of a batch must differ"
            field = {"field": f"[{index}].id", "problem": problem}
            raise ApiError(409, f"conflicting ids: [{index}].id: {problem}", [field])
    return Posted(events, array=True)


def body_schema(model: type[BaseModel], *, array: bool = False) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a route that reads its body with ``json_body``."""
    one = {"$ref": f"#/components/schemas/{model.__name__}"}
    schema = {"oneOf": [one, {"type": "array", "items": one}]} if array else one
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


BODY_MODELS = (
    NewEvent,
    SubscriptionFields,
    SubscriptionPatch,
    ExplainRequest,
    RedriveDeadLetters,
    RetryFilterFailures,
    Backfill,
)


def body(model: type[T]) -> Callable[[Request], Awaitable[T]]:
    """A route's JSON object body, read as ``model``."""
    return json_body(TypeAdapter(model).validate_json, "must be a JSON object")


def create_app(
    catalog: Catalog, repairs: Repairs, metrics: Metrics, health: Health, alive: Callable[[], bool]
) -> FastAPI:
    """The API, with the processor's ``/health``, ``/metrics``, ``/live`` and ``/ready``
    beside it; ``alive`` says whether the processing thread runs. ``repairs``
    serves the operator's routes (explain, re-drive, backfill), beside the
    processor as the commands run beside one."""
    app = FastAPI(
        title="fc-dev",
        description="The stream processor with its embedded store, for development.",
        dependencies=[Depends(once_each)],
    )
    app.add_middleware(BodyLimit)
    install_error_handlers(app)
    add_ops_routes(app, metrics, health, alive)
    errors = documents.error_responses

    @app.post(
        "/api/events",
        status_code=201,
        response_model=None,
        responses={201: {"model": documents.Published}, **errors(409, 413, 415, 422, 503)},
        openapi_extra=body_schema(NewEvent, array=True),
    )
    def publish(
        posted: Annotated[
            Posted, Depends(json_body(events_of, "must be an event (a JSON object) or an array of events"))
        ],
    ) -> Response:
        """One event or an array of them; a batch is written whole or not at all."""
        try:
            ids = catalog.insert_events([event.model_dump() for event in posted.events])
            # Written as they are: ids are strings, and the route is the hot path of a load test.
            return Response(json.dumps({"ids": ids}), 201, media_type="application/json")
        except EventExists as error:
            field = f"[{error.index}].id" if posted.array else "id"
            raise ApiError(409, str(error), [{"field": field, "problem": "is taken"}]) from None

    subscription_responses: dict[int | str, dict[str, Any]] = {200: {"model": documents.SubscriptionDocument}}

    @app.post(
        "/api/subscriptions",
        status_code=201,
        response_model=None,
        responses={201: {"model": documents.SubscriptionDocument}, **errors(413, 415, 422, 503)},
        openapi_extra=body_schema(SubscriptionFields),
    )
    def create_subscription(
        fields: Annotated[SubscriptionFields, Depends(body(SubscriptionFields))],
    ) -> dict[str, Any]:
        return subscription_document(catalog.create_subscription(fields))

    @app.get(
        "/api/subscriptions",
        response_model=None,
        responses={200: {"model": documents.SubscriptionList}, **errors(422, 503)},
    )
    def list_subscriptions(query: Annotated[SubscriptionQuery, Query()]) -> dict[str, list[dict[str, Any]]]:
        """Every subscription, in the order they were created; one that breaks the
        contract (written around the API) is listed with ``invalid``, the reason."""
        return {"items": [subscription_document(s) for s in catalog.subscriptions(query.client_id)]}

    @app.get(
        "/api/subscriptions/{subscription_id}",
        response_model=None,
        responses={**subscription_responses, **errors(404, 503)},
    )
    def get_subscription(subscription_id: str) -> dict[str, Any]:
        subscription = catalog.subscription(subscription_id)
        if subscription is None:
            raise not_found("subscription", subscription_id)
        return subscription_document(subscription)

    @app.patch(
        "/api/subscriptions/{subscription_id}",
        response_model=None,
        responses={**subscription_responses, **errors(404, 413, 415, 422, 503)},
        openapi_extra=body_schema(SubscriptionPatch),
    )
    def patch_subscription(
        subscription_id: str,
        patch: Annotated[SubscriptionPatch, Depends(body(SubscriptionPatch))],
    ) -> dict[str, Any]:
        """Fields left out keep their value; the result must be a valid subscription
        (so a patch can mend one stored invalid)."""
        subscription = catalog.update_subscription(subscription_id, patch)
        if subscription is None:
            raise not_found("subscription", subscription_id)
        return subscription_document(subscription)

    @app.delete("/api/subscriptions/{subscription_id}", status_code=204, responses=errors(404, 503))
    def delete_subscription(subscription_id: str) -> Response:
        if not catalog.delete_subscription(subscription_id):
            raise not_found("subscription", subscription_id)
        return Response(status_code=204)

    @app.get(
        "/api/dispatch-jobs",
        response_model=None,
        responses={200: {"model": documents.JobPage}, **errors(422, 503)},
    )
    def dispatch_jobs(query: Annotated[JobQuery, Query()]) -> Page:
        filters = query.model_dump()
        if query.status is not None:
            filters["status"] = query.status.upper()
        return catalog.dispatch_jobs(**filters)

    @app.get(
        "/api/dead-letters",
        response_model=None,
        responses={200: {"model": documents.DeadLetterPage}, **errors(422, 503)},
    )
    def dead_letters(query: Annotated[PageQuery, Query()]) -> Page:
        return catalog.dead_letters(**query.model_dump())

    @app.get(
        "/api/filter-failures",
        response_model=None,
        responses={200: {"model": documents.FilterFailurePage}, **errors(422, 503)},
    )
    def filter_failures(query: Annotated[FilterFailureQuery, Query()]) -> Page:
        """(event, subscription) pairs whose filter failed on the event: not matched, no job."""
        return catalog.filter_failures(**query.model_dump())

    @app.get(
        "/api/events",
        response_model=None,
        responses={200: {"model": documents.RecentEventPage}, **errors(422, 503)},
    )
    def recent_events(query: Annotated[RecentEventQuery, Query()]) -> Page:
        """The newest events first, each with the jobs it became so far."""
        return catalog.recent_events(**query.model_dump())

    @app.get("/api/stats", response_model=None, responses={200: {"model": documents.Stats}, **errors(503)})
    def stats() -> dict[str, Any]:
        """Event counts by type, jobs and last match per subscription, activity per client."""
        return catalog.stats()

    add_operator_routes(app, repairs)
    add_page(app, catalog)
    app.openapi = lambda: openapi(app)  # type: ignore[method-assign]
    return app


def add_operator_routes(app: FastAPI, repairs: Repairs) -> None:
    """Explain, re-drive and backfill: what ``fc-stream-processor``'s commands do,
    each request bounded by its ``limit``."""
    errors = documents.error_responses

    @app.post(
        "/api/explain",
        response_model=None,
        responses={200: {"model": documents.ExplanationDocument}, **errors(404, 413, 415, 422, 503)},
        openapi_extra=body_schema(ExplainRequest),
    )
    def explain(request: Annotated[ExplainRequest, Depends(body(ExplainRequest))]) -> dict[str, Any]:
        """For every subscription of the event's client: whether it matches, and if
        not, the first part that refuses it and why, as the processor judges now."""
        explanation: Explanation
        if request.event_id is not None:
            try:
                explanation = explain_stored(repairs, request.event_id)
            except LookupError:
                raise not_found("event", request.event_id) from None
            except InvalidEvent as error:
                problem = f"the stored event breaks the contract (it is a dead letter): {error}"
                raise ApiError(
                    422, f"event_id: {problem}", [{"field": "event_id", "problem": problem}]
                ) from None
        else:
            assert request.event is not None
            explanation = explain_unsaved(repairs, request.event.model_dump())
        return explanation.document()

    report_responses: dict[int | str, dict[str, Any]] = {200: {"model": documents.ReportDocument}}

    @app.post(
        "/api/redrive/dead-letters",
        response_model=None,
        responses={**report_responses, **errors(413, 415, 422, 503)},
        openapi_extra=body_schema(RedriveDeadLetters),
    )
    def redrive_dead_letters(
        request: Annotated[RedriveDeadLetters, Depends(body(RedriveDeadLetters))],
    ) -> dict[str, Any]:
        """Process dead letters again, once their stored events are mended: those
        that pass become jobs and go; the others stay, counted by reason."""
        fields = request.model_dump(exclude={"limit"})
        return remedies.redrive_dead_letters(
            repairs, **fields, limits=remedies.Limits(request.limit)
        ).document()

    @app.post(
        "/api/redrive/filter-failures",
        response_model=None,
        responses={**report_responses, **errors(413, 415, 422, 503)},
        openapi_extra=body_schema(RetryFilterFailures),
    )
    def retry_filter_failures(
        request: Annotated[RetryFilterFailures, Depends(body(RetryFilterFailures))],
    ) -> dict[str, Any]:
        """Judge pairs whose filter failed again: a match becomes its job; an
        answer either way resolves the pair."""
        fields = request.model_dump(exclude={"limit"})
        return remedies.retry_filter_failures(
            repairs, **fields, limits=remedies.Limits(request.limit)
        ).document()

    @app.post(
        "/api/backfill",
        response_model=None,
        responses={**report_responses, **errors(404, 409, 413, 415, 422, 503)},
        openapi_extra=body_schema(Backfill),
    )
    def backfill(request: Annotated[Backfill, Depends(body(Backfill))]) -> dict[str, Any]:
        """One subscription's missing jobs for past events, as it stands now."""
        key = request.subscription_id
        try:
            report = remedies.backfill(
                repairs, key, since=request.since, after=request.after, limits=remedies.Limits(request.limit)
            )
        except LookupError:
            raise not_found("subscription", key) from None
        except remedies.NotBackfillable as error:
            raise ApiError(409, str(error), [{"field": "subscription_id", "problem": str(error)}]) from None
        return report.document()


def not_found(what: str, key: str) -> ApiError:
    return ApiError(404, f"no {what} with id {key!r}")


def openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with the models that routes read with ``json_body``
    (FastAPI sees only a dependency there)."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        _, bodies = models_json_schema(
            [(model, "validation") for model in BODY_MODELS], ref_template="#/components/schemas/{model}"
        )
        document.setdefault("components", {}).setdefault("schemas", {}).update(bodies["$defs"])
        app.openapi_schema = document
    return app.openapi_schema
