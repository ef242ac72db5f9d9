"""Bad input gets a 4xx with the JSON error shape, never a 500, the same on both backends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
import websockets

from tests.api.conftest import Server, ServerFactory


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


SCHEDULE = {"name": "s", "trigger": {"type": "cron", "expr": "0 9 * * *"}}
RUN_CONFIG = {"message": "m", "model": "scripted:echo"}

# (method, path, raw JSON body, field named by the 422)
REFUSED = [
    ("/v1/sessions", {"metadata": nested(300)}, "metadata"),
    ("/v1/sessions", {"metadata": nested(33)}, "metadata"),
    ("/v1/sessions", '{"system_prompt": "\\ud800"}', "system_prompt"),
    ("/v1/sessions", '{"metadata": {"k": ["\\udfff"]}}', "metadata.k.0"),
    ("/v1/sessions", '{"metadata": {"\\ud800": 1}}', "metadata"),
    ("/v1/sessions", '{"system_prompt": "a\\u0000b"}', "system_prompt"),
    ("/v1/sessions", '{"metadata": {"k": "a\\u0000b"}}', "metadata.k"),
    ("/v1/sessions", '{"tools": ["read\\u0000"]}', "tools.0"),
    ("/v1/runs", '{"message": "a\\u0000b", "model": "scripted:echo"}', "message"),
    ("/v1/runs", '{"message": "hi", "metadata": {"x": "\\ud800"}}', "metadata.x"),
    ("/v1/schedules", {**SCHEDULE, "name": "a\x00", "run_config": RUN_CONFIG}, "name"),
    (
        "/v1/schedules",
        {**SCHEDULE, "run_config": {**RUN_CONFIG, "system_prompt": "\x00"}},
        "run_config.system_prompt",
    ),
    (
        "/v1/schedules",
        {
            **SCHEDULE,
            "timezone": "America/Los_Angeles",
            "trigger": {"type": "once", "at": "9999-12-31T23:59:59"},
            "run_config": RUN_CONFIG,
        },
        "trigger.at",
    ),
    (
        "/v1/schedules",
        {
            **SCHEDULE,
            "timezone": "Asia/Tokyo",
            "trigger": {"type": "once", "at": "0001-01-01T00:00:00", "run_now_if_past": True},
            "run_config": RUN_CONFIG,
        },
        "trigger.at",
    ),
    (
        "/v1/schedules",
        {
            **SCHEDULE,
            "trigger": {"type": "once", "at": "2000-01-01T00:00:00Z"},
            "run_config": RUN_CONFIG,
        },
        "trigger.at",
    ),
    ("/v1/runs", {"message": "hi", "model": "nope:x"}, "model"),
    ("/v1/runs", {"message": "hi", "tools": ["nope"]}, "tools"),
    ("/v1/runs", {"message": "hi", "workspace": "/no/such/dir"}, "workspace"),
    ("/v1/sessions", {"model": "scripted:no-such-script"}, "model"),
    ("/v1/sessions", {"tools": ["read", "nope"]}, "tools"),
    ("/v1/sessions", {"workspace": "/no/such/dir"}, "workspace"),
    # Past what the database's columns hold (INTEGER, BIGINT): PostgreSQL refused them (500).
    ("/v1/sessions", {"max_rounds": 2**31}, "max_rounds"),
    ("/v1/sessions", {"max_tokens": 2**63}, "max_tokens"),
    ("/v1/runs", {"message": "hi", "max_tokens": 2**53}, "max_tokens"),
]


def _raw(body: Any) -> bytes:
    text = body if isinstance(body, str) else json.dumps(body)
    return text.encode("utf-8", "surrogatepass")


async def test_bad_input_is_a_422_naming_the_field_on_both_backends(
    make_server: ServerFactory,
) -> None:
    async with (
        make_server() as server,
        httpx2.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        for path, body, field in REFUSED:
            response = await client.post(
                path, content=_raw(body), headers={"content-type": "application/json"}
            )
            label = f"{path} {str(body)[:80]}"
            assert response.status_code == 422, (label, response.text)
            error = response.json()["error"]
            assert error["code"] == "invalid_request", label
            assert error["field"] == field, (label, error)
            assert error["message"].startswith(f"{field}: "), (label, error)
        # Nothing of it was stored, and what is fine still is.
        assert (await client.get("/v1/sessions")).json()["sessions"] == []
        assert (await client.get("/v1/schedules")).json()["schedules"] == []
        ok = await client.post("/v1/sessions", json={"metadata": nested(32), "system_prompt": "é"})
        assert ok.status_code == 201, ok.text
        session = ok.json()
        for path, status in [
            ("/v1/sessions/%00", 404),
            ("/v1/runs/%00/events", 404),
            ("/v1/schedules/%00", 404),
            ("/v1/runs?session_id=%00", 200),
            ("/v1/metrics/sessions?model=%00", 200),
        ]:  # a NUL in a path or query: PostgreSQL refused the statement (500)
            answer = await client.get(path)
            assert answer.status_code == status, (path, answer.text)
        busy = await client.post(
            f"/v1/sessions/{session['session_id']}/runs",
            json={"message": "hi", "model": "nope:x"},
        )
        assert busy.status_code == 422 and busy.json()["error"]["field"] == "model"


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


@pytest.mark.parametrize(
    ("body", "position"),
    [('{"metadata": {', 14), ('{"message": "hi",}', 17), ('{"message": "hi"} x', 18), ("[1, 2", 5)],
)
async def test_malformed_json_is_400_invalid_json_with_the_position(
    client: httpx2.AsyncClient, body: str, position: int
) -> None:
    response = await client.post(
        "/v1/runs", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_json"
    assert "field" not in error
    assert error["message"].endswith(f"at character {position}"), error


async def test_a_huge_last_event_id_is_a_cursor_past_every_event(
    client: httpx2.AsyncClient,
) -> None:
    run = (await client.post("/v1/runs", json={"message": "hi", "model": "scripted:echo"})).json()
    await client.get(f"/v1/runs/{run['run_id']}/wait")
    for value in ("9" * 4301, "0" * 5000 + "2", "9" * 19):
        response = await client.get(
            f"/v1/runs/{run['run_id']}/events", headers={"Last-Event-ID": value}
        )
        assert response.status_code == 200, value[:20]
        seqs = [line for line in response.text.splitlines() if line.startswith("id: ")]
        expected = ["id: 3"] if value.endswith("2") and set(value[:-1]) == {"0"} else []
        assert seqs[: len(expected)] == expected, value[:20]


async def test_the_bearer_scheme_is_case_insensitive(make_server: ServerFactory) -> None:
    async with (
        make_server(api_key="s3cret") as server,
        httpx2.AsyncClient(base_url=server.url) as client,
    ):
        for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
            answer = await client.get("/v1/runs", headers={"authorization": f"{scheme} s3cret"})
            assert answer.status_code == 200, scheme
        for wrong in ("bearer nope", "bearers3cret", "Basic s3cret", "s3cret", "bearer"):
            answer = await client.get("/v1/runs", headers={"authorization": wrong})
            assert answer.status_code == 401, wrong
        run = await client.post(
            "/v1/runs",
            json={"message": "hi", "model": "scripted:echo"},
            headers={"authorization": "bearer s3cret"},
        )
        run_id = run.json()["run_id"]
        url = server.url.replace("http", "ws") + f"/v1/runs/{run_id}/ws?after=0"
        async with websockets.connect(
            url, additional_headers={"authorization": "bearer s3cret"}
        ) as ws:
            first = json.loads(await ws.recv())
        assert first["seq"] == 1
        with pytest.raises(websockets.InvalidStatus) as refused:  # closed before accepted
            async with websockets.connect(url, additional_headers={"authorization": "bearer no"}):
                pass
        assert refused.value.response.status_code == 403


async def test_json_too_deep_to_parse_is_400_invalid_json(client: httpx2.AsyncClient) -> None:
    """json.loads gives up on it (RecursionError): FastAPI's own 400, with culm's code."""
    body = '{"message": "hi", "metadata": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = await client.post(
        "/v1/runs", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_json"
