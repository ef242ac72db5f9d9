"""Property-based tests of the HTTP API from its OpenAPI spec (schemathesis).

Each operation of the spec gets generated requests, valid and invalid, sent to the app in
process (schemathesis' ASGI transport, which runs the app's lifespan, so the engine is started,
and stops it when the test ends). Every response is checked: never a 5xx, a documented status,
content type and headers, a body that matches the documented schema (SSE frames included).

``test_api`` sends whatever ids the spec allows (so mostly unknown ones: 404);
``test_api_on_existing_resources`` sends the same requests to a session and a finished run that
exist, where the handlers go deeper (cursors, waits, cancels, new runs).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

import culm
from culm.api import openapi
from culm.api.app import create_app

# Statuses that schemathesis accepts for schema-valid requests (its default list). The routes
# that take model, tool and workspace names may also answer 422: a name can be well formed and
# still unknown, which no schema can say; `names_beyond_the_schema` checks that such a 422
# names one of those fields, so that any other 422 to a schema-valid request fails the test.
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
# Fields whose valid values depend on the server (its models, tools, directories, zones, the
# clock) or on its policy (sessions' own MCP servers): well formed, they may still be refused.
BEYOND_THE_SCHEMA = re.compile(
    r"(run_config\.)?(agent|model|tools(\.\d+)?|workspace)|mcp_servers(\..+)?|timezone"
    r"|trigger\.(expr|at)"
)
CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": 20261121,  # the same requests on every run: a failure here is never flaky
        # No NUL in generated text: culm refuses it anywhere in a body (422 naming the field,
        # docs/http-api.md), a rule that JSON Schema cannot state inside `metadata`.
        "generation": {"max-examples": 25, "database": "none", "allow-x00": False},
        "request-timeout": 5,
        "operations": [
            {
                "include-method": "POST",
                "include-path-regex": "^/v1/(sessions|runs)$|^/v1/sessions/[^/]+/runs$",
                "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "422"]}},
            },
            # So may an agent's definition (the same names as a session's).
            {
                "include-method": "PUT",
                "include-path-regex": "^/v1/agents/[^/]+$",
                "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "422"]}},
            },
            # So may schedules: a time zone or cron expression too (well formed, yet unknown).
            {
                "include-method": ["POST", "PATCH"],
                "include-path-regex": "^/v1/schedules(/[^/]+)?$",
                "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "422"]}},
            },
        ],
    }
)


@schemathesis.check
def names_beyond_the_schema(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """A schema-valid request refused with 422 names a field whose values no schema can
    list; any other such 422 means that the spec and the validation disagree."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
        return None
    field = response.json()["error"].get("field") or ""
    if not BEYOND_THE_SCHEMA.fullmatch(field):
        raise AssertionError(f"schema-valid request refused: {response.text}")
    return None


# The proxy's routes forward whatever they get to the provider (tests/proxy covers them).
schema = schemathesis.openapi.from_dict(openapi.spec(), config=CONFIG).exclude(tag="proxy")
FIXTURE_SETTINGS = settings(
    deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    # Provider endpoints on a closed loopback port: a generated `openai:…` model never leaves
    # the machine. The one MCP server cannot start (so a refresh answers at once).
    settings = culm.Settings(
        home=tmp_path / "home",
        api_key=None,
        openai_api_key=None,
        openai_base_url="http://127.0.0.1:9/v1",
        anthropic_api_key=None,
        anthropic_base_url="http://127.0.0.1:9",
        mcp_servers={"none": {"command": str(tmp_path / "no-such-mcp-server")}},
    )
    return create_app(settings)


@schema.parametrize()
@FIXTURE_SETTINGS
def test_api(case: schemathesis.Case, app: FastAPI) -> None:
    case.call_and_validate(app=app)


@pytest.fixture
def existing(app: FastAPI) -> dict[str, str]:
    """A session with one finished run, made through the API, and an MCP server: the ids to
    send."""
    created = _call(app, "POST", "/v1/runs", body={"message": "hi", "model": "scripted:echo"})
    run_id = created["run_id"]
    finished = _call(app, "GET", "/v1/runs/{run_id}/wait", path_parameters={"run_id": run_id})
    assert finished["status"] == "completed", finished
    schedule = _call(
        app,
        "POST",
        "/v1/schedules",
        body={
            "name": "s",
            "trigger": {"type": "cron", "expr": "0 9 * * *"},
            "run_config": {"message": "hi", "model": "scripted:echo"},
        },
    )
    return {
        "session_id": created["session_id"],
        "run_id": run_id,
        "name": "none",
        "schedule_id": schedule["schedule_id"],
    }


# The session stream is left out: it never ends by itself (its 404 and 422 are in test_api).
@schema.exclude(path="/v1/sessions/{session_id}/events").parametrize()
@FIXTURE_SETTINGS
def test_api_on_existing_resources(
    case: schemathesis.Case, app: FastAPI, existing: dict[str, str]
) -> None:
    for name in case.path_parameters or {}:
        case.path_parameters[name] = existing[name]
    case.call_and_validate(app=app)


def _call(app: FastAPI, method: str, path: str, **parts: Any) -> Any:
    response = schema[path][method].Case(**parts).call(app=app)
    assert response.status_code < 300, response.text
    return response.json()
