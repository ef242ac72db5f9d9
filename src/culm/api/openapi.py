"""The API's OpenAPI document: what FastAPI cannot infer from the routes, and the committed copy.

FastAPI builds the spec from the routes and their ``responses=`` metadata (:func:`errors`,
:func:`wait_timeout`, :func:`event_stream`). :func:`install` adds what holds app-wide:

- the bearer key, as *optional* security: the auth middleware is added only when
  ``CULM_API_KEY`` is set, and ``/health`` is always open (401 is documented where it applies);
- the errors raised outside the routes, all as :class:`ErrorBody`: 422 for request validation
  (instead of FastAPI's ``HTTPValidationError``), and 400 (not JSON) and 413 (over the body
  limit) wherever a request body is taken;
- the run event schemas that the SSE streams (and the WebSocket) carry.

``docs/openapi.json`` is :func:`spec` as JSON; regenerate it with ``make openapi``
(``python -m culm.api.openapi > docs/openapi.json``). A test fails when it drifts from the app.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, TypeAdapter

from culm.api.middleware import OPEN_PATHS
from culm.api.schemas import ErrorBody, WaitTimeout
from culm.domain.events import RunEvent

Responses = dict[int | str, dict[str, Any]]
Schema = dict[str, Any]

SECURITY_SCHEME = "bearer"
_REF = "#/components/schemas/{model}"
_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")

UNAUTHORIZED = (
    "`unauthorized`: the server has `CULM_API_KEY` set and the bearer token is missing or wrong"
)
BAD_JSON = "`invalid_json`: the request body is not JSON (the message says where it fails)"
BODY_TOO_LARGE = (
    "`body_too_large`: the request body is over the server's limit "
    "(1 MiB by default, 32 MiB on the proxy's routes)"
)
INVALID = "`invalid_request`: a parameter or field is missing or invalid (`field` names it)"


def errors(statuses: Mapping[int, str]) -> Responses:
    """``responses=`` metadata: each status answered with an :class:`ErrorBody`, described."""
    return {status: {"model": ErrorBody, "description": text} for status, text in statuses.items()}


def wait_timeout(description: str) -> Responses:
    """``responses=`` metadata for a wait that timed out: 408 with the run as it is."""
    return {408: {"model": WaitTimeout, "description": f"`timeout`: {description}"}}


def event_stream(description: str) -> Responses:
    """``responses=`` metadata for an SSE stream of run events (``id: seq``, ``event: type``,
    ``data: the event's JSON``). OpenAPI 3.1 has no item schema for streams (``itemSchema`` is
    3.2's): as tools read 3.1 (schemathesis among them), the media type's ``schema`` describes
    each event of the stream."""
    item = {
        "type": "object",
        "required": ["id", "event", "data"],
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9]+$", "description": "the event's `seq`"},
            "event": {"type": "string", "enum": _event_types(), "description": "its `type`"},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"$ref": _REF.format(model="RunEvent")},
            },
        },
    }
    item["description"] = "One event of the stream (each SSE frame)"
    content = {"text/event-stream": {"schema": item}}
    return {200: {"description": description, "content": content}}


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` return the completed spec (generated once, then cached)."""
    generate = app.openapi

    def openapi() -> Schema:
        if app.openapi_schema is None:
            schema = generate()
            _complete(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def _complete(schema: Schema) -> None:
    components: Schema = schema.setdefault("components", {})
    definitions: Schema = components.setdefault("schemas", {})
    if ErrorBody.__name__ not in definitions:  # FastAPI adds it when a route refers to it
        _merge(definitions, ErrorBody.__name__, _json_schema(ErrorBody))
    _merge(definitions, "RunEvent", _run_event_schema())
    components["securitySchemes"] = {
        SECURITY_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "`CULM_API_KEY`: required on every route but `/health` when the "
            "server has a key set; without one the API is open (loopback only).",
        }
    }
    schema["security"] = [{}, {SECURITY_SCHEME: []}]
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            _complete_operation(path, operation)
    for name in _FASTAPI_VALIDATION_SCHEMAS:
        definitions.pop(name, None)


def _complete_operation(path: str, operation: Schema) -> None:
    responses: Schema = operation.setdefault("responses", {})
    if path in OPEN_PATHS:
        operation["security"] = []
    else:
        responses.setdefault("401", _error_response(UNAUTHORIZED))
    if "requestBody" in operation:
        if "proxy" not in operation.get("tags", ()):  # the proxy's upstream judges the body
            responses.setdefault("400", _error_response(BAD_JSON))
        responses.setdefault("413", _error_response(BODY_TOO_LARGE))
    if _schema_name(responses.get("422")) == "HTTPValidationError":  # FastAPI's, not ours
        responses["422"] = _error_response(INVALID)


def _schema_name(response: Schema | None) -> str | None:
    schema = (response or {}).get("content", {}).get("application/json", {}).get("schema", {})
    ref: str = schema.get("$ref", "")
    return ref.rpartition("/")[2] or None


def _error_response(description: str) -> Schema:
    schema = {"$ref": _REF.format(model=ErrorBody.__name__)}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _event_types() -> list[str]:
    return sorted(_run_event_schema()["discriminator"]["mapping"])


def _json_schema(model: type[BaseModel]) -> Schema:
    return model.model_json_schema(ref_template=_REF, mode="serialization")


def _run_event_schema() -> Schema:
    events = TypeAdapter(RunEvent).json_schema(ref_template=_REF, mode="serialization")
    events["description"] = "A run event: the `data` of an SSE frame, a WebSocket text frame."
    return events


def _merge(definitions: Schema, name: str, schema: Schema) -> None:
    """Add ``schema`` and its ``$defs`` under their names; a name taken by another schema is a
    bug (two models with one name), not something to paper over."""
    for key, value in [*schema.pop("$defs", {}).items(), (name, schema)]:
        if definitions.setdefault(key, value) != value:
            raise RuntimeError(f"two different schemas are named {key!r} in the OpenAPI spec")


def spec() -> Schema:
    """The app's OpenAPI document for default settings (no environment, no config file), with
    keys sorted: what ``docs/openapi.json`` holds."""
    from culm.api.app import create_app  # here, not on top: app.py imports this module
    from culm.settings import Settings

    app = create_app(Settings.model_construct())
    document: Schema = json.loads(dumps(app.openapi()))
    return document


def dumps(document: Schema) -> str:
    """The committed text form: two-space indents, sorted keys, ASCII, a final newline."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def main() -> None:
    sys.stdout.write(dumps(spec()))


if __name__ == "__main__":
    main()
