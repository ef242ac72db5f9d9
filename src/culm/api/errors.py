"""The one place culm's exceptions become HTTP responses: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from culm.domain.fields import field_path
from culm.domain.text import storable
from culm.errors import (
    AlreadyRunningError,
    ConfigError,
    EngineClosedError,
    InputConflictError,
    InvalidFieldError,
    NotFoundError,
    ReadOnlyError,
    RunFailure,
    SessionBusyError,
    StorageUnavailableError,
    UnknownModelError,
    UnknownToolError,
    UserError,
)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    409: "conflict",
    413: "body_too_large",
    422: "invalid_request",
    503: "unavailable",
}


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    detail = {"code": code, "message": message, **{k: v for k, v in extra.items() if v is not None}}
    # A message may quote the input: never let a lone surrogate in it fail the response.
    detail = {k: storable(v) if isinstance(v, str) else v for k, v in detail.items()}
    return JSONResponse({"error": detail}, status_code=status, headers=headers)


def _user_error(exc: UserError) -> JSONResponse:
    match exc:
        case InputConflictError():
            first = exc.request.model_dump(mode="json")
            return error_response(409, "input_conflict", str(exc), request=first)
        case NotFoundError():
            return error_response(404, "not_found", str(exc))
        case AlreadyRunningError():
            return error_response(409, "already_running", str(exc), run_id=exc.run_id)
        case SessionBusyError():
            return error_response(409, "session_busy", str(exc), run_id=exc.run_id)
        case ReadOnlyError():
            return error_response(409, "read_only", str(exc))
        case InvalidFieldError():
            return error_response(422, "invalid_request", str(exc), field=exc.field)
        case UnknownModelError() | UnknownToolError() | ConfigError():
            return error_response(422, "invalid_request", str(exc))
    return error_response(400, "bad_request", str(exc))


def _field(loc: Sequence[Any], body: Any = None) -> str:
    if loc and loc[0] == "body":  # without the tags of discriminated unions (trigger.expr)
        return field_path(loc[1:], body) or "body"
    parts = [str(part) for part in loc if part not in ("body", "query", "path", "header")]
    return ".".join(parts) or ".".join(str(part) for part in loc)


def _invalid_json(error: Mapping[str, Any]) -> JSONResponse:
    """A body that is not JSON: 400, with where the parser gave up (not a 422 naming a
    character position as if it were a field)."""
    loc = error.get("loc", ())
    position = loc[-1] if len(loc) > 1 and isinstance(loc[-1], int) else None
    reason = str((error.get("ctx") or {}).get("error") or "not JSON")
    where = f" at character {position}" if position is not None else ""
    message = f"the request body is not valid JSON: {reason}{where}"
    return error_response(400, "invalid_json", message)


def install(app: FastAPI) -> None:
    @app.exception_handler(UserError)
    async def _on_user_error(request: Request, exc: UserError) -> JSONResponse:
        return _user_error(exc)

    @app.exception_handler(EngineClosedError)
    async def _on_closed(request: Request, exc: EngineClosedError) -> JSONResponse:
        return error_response(503, "unavailable", str(exc))

    @app.exception_handler(RunFailure)
    async def _on_run_failure(request: Request, exc: RunFailure) -> JSONResponse:
        # Work a request does itself (a manual compaction's summarizer call) failed upstream.
        return error_response(502, exc.code, str(exc))

    @app.exception_handler(StorageUnavailableError)
    async def _on_storage(request: Request, exc: StorageUnavailableError) -> JSONResponse:
        return error_response(503, exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return _invalid_json(first)
        field = _field(first.get("loc", ()), exc.body)
        text = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        message = f"{field}: {text}" if field else text
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more)"
        return error_response(422, "invalid_request", message, field=field or None)

    @app.exception_handler(HTTPException)
    async def _on_http(request: Request, exc: HTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        if exc.status_code == 400 and exc.detail == _FASTAPI_BODY_ERROR:
            code = "invalid_json"  # json.loads failed otherwise (nested too deep, not UTF-8)
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": _allowed_methods(request)}
        return error_response(exc.status_code, code, str(exc.detail), headers=headers)


# What FastAPI raises when parsing a JSON body fails otherwise than by a JSONDecodeError.
_FASTAPI_BODY_ERROR = "There was an error parsing the body"
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str:
    """Every method that some route answers on this path. Starlette's 405 names only the
    methods of the first route that matched the path (``GET /v1/runs`` hid ``POST``)."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]
    return ", ".join(allowed)
