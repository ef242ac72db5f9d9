"""The committed OpenAPI spec (docs/openapi.json) is the app's, and it documents what the app does."""

from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator

from culm.api import openapi
from tests.api.conftest import Server

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
REGENERATE = "make openapi  (or: python -m culm.api.openapi > docs/openapi.json)"
# ErrorBody, and two that add to it: the run of a wait that timed out, the request of a 409 on
# an answered input request (its first answer).
ERROR_SCHEMAS = {
    "#/components/schemas/ErrorBody",
    "#/components/schemas/WaitTimeout",
    "#/components/schemas/InputConflict",
}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return openapi.spec()


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    ]


def test_the_committed_spec_is_the_apps(spec: dict[str, Any]) -> None:
    committed = COMMITTED.read_text(encoding="utf-8") if COMMITTED.exists() else ""
    current = openapi.dumps(spec)
    if committed == current:
        return
    diff = difflib.unified_diff(
        committed.splitlines(keepends=True),
        current.splitlines(keepends=True),
        "docs/openapi.json (committed)",
        "the app's spec",
        n=2,
    )
    shown = "".join(list(diff)[:60])
    pytest.fail(
        f"docs/openapi.json differs from the app's spec. Regenerate it with\n    {REGENERATE}\n"
        f"and commit it with the change that moved the API.\n\n{shown}",
        pytrace=False,
    )


def test_the_spec_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    """``itemSchema`` (OpenAPI 3.2) in a 3.1 document made every validator refuse it."""
    assert spec["openapi"].startswith("3.1.")
    validator = OpenAPIV31SpecValidator(spec)
    errors = [f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors()]
    assert errors == []


def test_the_spec_does_not_depend_on_the_machine(
    spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CULM_HOME", str(tmp_path))
    monkeypatch.setenv("CULM_API_KEY", "secret")
    monkeypatch.setenv("CULM_MAX_REQUEST_BYTES", "4096")
    (tmp_path / "config.toml").write_text('default_model = "scripted:echo"\n')
    assert openapi.spec() == spec
    text = openapi.dumps(spec)
    for value in (str(Path.home()), str(tmp_path), "127.0.0.1", "localhost", "secret"):
        assert value not in text


def test_the_module_prints_the_spec(spec: dict[str, Any]) -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "culm.api.openapi"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert printed == openapi.dumps(spec)


async def test_the_server_serves_the_spec(server: Server, spec: dict[str, Any]) -> None:
    async with httpx2.AsyncClient(base_url=server.url) as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.json() == spec


def test_every_operation_documents_its_errors(spec: dict[str, Any]) -> None:
    for method, path, operation in operations(spec):
        responses = operation["responses"]
        label = f"{method} {path}"
        if path == "/health":
            assert operation["security"] == [], label
            continue
        expected = {"401"}
        if "proxy" in operation["tags"]:  # forwarded as it is: the upstream validates it
            expected |= {"502", "504"} | ({"413"} if "requestBody" in operation else set())
        elif operation.get("parameters") or "requestBody" in operation:
            expected.add("422")  # only what takes input can be refused as invalid
        if "{" in path:
            expected.add("404")
        if "requestBody" in operation and "proxy" not in operation["tags"]:
            expected |= {"400", "413"}
        assert expected <= set(responses), label
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                schema = response["content"]["application/json"]["schema"]
                assert schema["$ref"] in ERROR_SCHEMAS, f"{label} {status}"
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas  # FastAPI's 422 body: culm answers ErrorBody


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("DELETE", "/v1/sessions/{session_id}", {"409"}),
        ("POST", "/v1/sessions/{session_id}/runs", {"409"}),
        ("GET", "/v1/runs/{run_id}/wait", {"408"}),
        ("POST", "/v1/runs/{run_id}/cancel", {"408"}),
    ],
)
def test_conflicts_and_timeouts_are_documented(
    spec: dict[str, Any], method: str, path: str, statuses: set[str]
) -> None:
    assert statuses <= set(spec["paths"][path][method.lower()]["responses"])


def test_wait_timeouts_carry_the_run(spec: dict[str, Any]) -> None:
    for path in ("/v1/runs/{run_id}/wait", "/v1/runs/{run_id}/cancel"):
        responses = next(iter(spec["paths"][path].values()))["responses"]
        schema = responses["408"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/WaitTimeout"}


@pytest.mark.parametrize("path", ["/v1/runs/{run_id}/events", "/v1/sessions/{session_id}/events"])
def test_event_streams_are_documented_as_sse(spec: dict[str, Any], path: str) -> None:
    content = spec["paths"][path]["get"]["responses"]["200"]["content"]
    assert list(content) == ["text/event-stream"]
    item = content["text/event-stream"]["schema"]  # each event: OpenAPI 3.1 has no itemSchema
    data = item["properties"]["data"]
    assert data["contentMediaType"] == "application/json"
    assert data["contentSchema"] == {"$ref": "#/components/schemas/RunEvent"}
    assert "complete" in item["properties"]["event"]["enum"]
    assert "gap" in item["properties"]["event"]["enum"]


def test_the_bearer_key_is_declared_as_optional(spec: dict[str, Any]) -> None:
    scheme = spec["components"]["securitySchemes"][openapi.SECURITY_SCHEME]
    assert scheme["type"] == "http"
    assert scheme["scheme"] == "bearer"
    assert {} in spec["security"]  # no key: the server runs without CULM_API_KEY
    assert {openapi.SECURITY_SCHEME: []} in spec["security"]


def test_run_events_are_documented_by_type(spec: dict[str, Any]) -> None:
    run_event = spec["components"]["schemas"]["RunEvent"]
    mapping = run_event["discriminator"]["mapping"]
    assert {"token", "tool_start", "complete", "cancelled", "error", "gap"} <= set(mapping)
    for ref in mapping.values():
        assert ref.rpartition("/")[2] in spec["components"]["schemas"]
