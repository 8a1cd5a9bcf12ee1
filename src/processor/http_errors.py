"""One error shape for every HTTP response that is not 2xx, whatever refused it.

``{"error": "<what went wrong>", "fields": [{"field": ..., "problem": ...}]}``,
``fields`` empty when no field is at fault. FastAPI's own refusals (a route
that does not exist, a method it does not take, a query that does not
validate), the body limit, the store's errors and any exception a route did
not expect all answer in it. An unexpected exception is logged with its
traceback under an id that the response carries (in ``error`` and the
``X-Error-Id`` header), so a user's report leads to the log line.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from processor.stores.base import StoreUnavailable

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
REQUEST_PARTS = ("body", "query", "path")  # where FastAPI says a faulty input came from
LONE_SURROGATE = "holds a lone surrogate escape (\\ud800-\\udfff), which is not Unicode text"
# The words of pydantic's JSON parser (jiter), and what they mean to a person who sent the body.
JSON_PROBLEMS = {
    "recursion limit exceeded": "nests arrays and objects more than 200 levels deep",
    "number out of range": "holds a number too large to read",
    "invalid unicode code point": "is not valid UTF-8 text",
    "lone leading surrogate": LONE_SURROGATE,
    "unexpected end of hex escape": LONE_SURROGATE,
    "invalid escape": "holds an invalid escape",
}


class ApiError(Exception):
    """A refusal with its status; rendered in the one error shape."""

    def __init__(
        self,
        status: int,
        error: str,
        fields: Sequence[Mapping[str, str]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.fields = list(fields)
        self.headers = headers


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


def json_problem(message: str) -> str:
    """pydantic's ``Invalid JSON: <words> at line L column C``, in plain words with the place."""
    words = message.removeprefix("Invalid JSON: ")
    place = ""
    if " at line " in words:
        words, place = words.rsplit(" at line ", 1)
        place = f" (at line {place})"
    for known, meaning in JSON_PROBLEMS.items():
        if known in words:
            return meaning + place
    return f"is not valid JSON: {words}{place}"


def field_problems(
    errors: Iterable[Mapping[str, Any]], *, from_request: bool, root: str = "must be a JSON object"
) -> list[dict[str, str]]:
    """pydantic's errors as ``{"field", "problem"}``, worded as ``models.describe``
    words them; ``root`` says what the whole body should have been."""
    problems = []
    for detail in errors:
        location = list(detail["loc"])
        if from_request and location and location[0] in REQUEST_PARTS:
            location = location[1:]
        kind = detail["type"]
        if kind == "json_invalid":
            if from_request:  # FastAPI's parser: the location ends with the character
                problem = f"is not valid JSON: {detail['ctx']['error']} at character {location.pop()}"
            else:
                problem = json_problem(str(detail["msg"]))
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            problem = root if not location else "must be a JSON object"
        else:
            problem = str(detail["msg"]).removeprefix("Value error, ")
        problems.append({"field": field_name(location), "problem": problem})
    return problems


def invalid(problems: list[dict[str, str]]) -> ApiError:
    summary = "; ".join(f"{problem['field']}: {problem['problem']}" for problem in problems)
    return ApiError(422, f"invalid request: {summary}", problems)


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


class Unexpected:
    """The last guard: an exception no handler took is logged with an id and
    answered 500 in the error shape, instead of Starlette's plain text."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            error_id = secrets.token_hex(8)
            log.exception(
                "%s %s failed unexpectedly (error id %s)", scope.get("method"), scope.get("path"), error_id
            )
            if started or scope["type"] != "http":
                raise  # too late to answer: the server closes the connection
            response = error_response(
                500,
                f"internal error (id {error_id}); the server's log has its details",
                headers={"X-Error-Id": error_id},
            )
            await response(scope, receive, send)


def allowed_methods(app: FastAPI, scope: Scope) -> str:
    """Every method some route of this path takes: Starlette names only the
    first route's, and a path served by several routes takes them all."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches({**scope, "method": "OPTIONS"})
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    """Whatever refuses a request, the client gets the one error shape."""
    app.add_middleware(Unexpected)

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return await refused(request, invalid(field_problems(error.errors(), from_request=True)))

    @app.exception_handler(ValidationError)
    async def model_invalid(request: Request, error: ValidationError) -> JSONResponse:
        return await refused(request, invalid(field_problems(error.errors(), from_request=False)))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        headers = dict(error.headers or {})
        if error.status_code == 405:
            headers["Allow"] = allowed_methods(app, request.scope)
        return error_response(error.status_code, str(error.detail), headers=headers)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, error: BodyTooLarge) -> JSONResponse:
        return too_large()

    @app.exception_handler(ApiError)
    async def refused(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.error, error.fields, error.headers)

    @app.exception_handler(StoreUnavailable)
    async def unavailable(request: Request, error: StoreUnavailable) -> JSONResponse:
        return error_response(503, f"the store is busy or unavailable, try again: {error}")
