"""People in the loop over HTTP (a real server): the input routes, their errors, the session
fields, a child's approval seen in its parent's stream and answered on the child's run id."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

import culm
from tests.api.conftest import Server, running_server
from tests.api.sse import frames
from tests.input.support import call


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    settings = culm.Settings(home=tmp_path / "home", heartbeat_seconds=0.1)
    async with running_server(settings) as running:
        yield running


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


async def _waiting(client: httpx2.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    async with asyncio.timeout(20):
        while True:
            requests = (await client.get(f"/v1/runs/{run_id}/input")).json()["requests"]
            if requests:
                return list(requests)
            await asyncio.sleep(0.02)


async def test_approve_over_http_with_the_errors_of_the_contract(
    server: Server, client: httpx2.AsyncClient
) -> None:
    server.engine.scripts.register(
        "bash_then_done", {"turns": [[call("bash", command="echo hi")], [{"text": "ok"}]]}
    )
    created = await client.post(
        "/v1/runs",
        json={
            "message": "go",
            "model": "scripted:bash_then_done",
            "tools": ["bash"],
            "require_approval": ["ba*"],
            "input_timeout": 600,
        },
    )
    assert created.status_code == 202, created.text
    run_id = created.json()["run_id"]
    [request] = await _waiting(client, run_id)
    assert {k: request[k] for k in ("kind", "tool_name", "arguments", "run_id")} == {
        "kind": "approval",
        "tool_name": "bash",
        "arguments": {"command": "echo hi"},
        "run_id": run_id,
    }
    assert request["expires_at"] is not None and "question" in request and "choices" in request
    run = (await client.get(f"/v1/runs/{run_id}")).json()
    assert run["status"] == "waiting"
    waiting = (await client.get("/v1/runs", params={"status": "waiting"})).json()["runs"]
    assert [r["run_id"] for r in waiting] == [run_id]
    url = f"/v1/runs/{run_id}/input"
    missing = await client.post(url, json={"request_id": "nope", "approve": True})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    empty = await client.post(url, json={"request_id": request["request_id"]})
    assert empty.status_code == 422
    wrong = await client.post(url, json={"request_id": request["request_id"], "answer": "x"})
    assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "answer"
    body = {"request_id": request["request_id"], "approve": True}
    first = await client.post(url, json=body)
    assert first.status_code == 200 and first.json()["answer"]["approve"] is True
    assert (await client.post(url, json=body)).status_code == 200  # the same again
    other = await client.post(url, json={**body, "approve": False})
    assert other.status_code == 409
    error = other.json()["error"]
    assert error["code"] == "input_conflict" and error["request"]["answer"]["approve"] is True
    done = (await client.get(f"/v1/runs/{run_id}/wait", params={"timeout": 20})).json()
    assert done["status"] == "completed"
    late = await client.post(url, json={**body, "approve": False})
    assert late.status_code == 409
    assert (await client.post("/v1/runs/unknown/input", json=body)).status_code == 404
    assert (await client.get("/v1/runs/unknown/input")).status_code == 404
    metrics = (await client.get("/metrics")).text
    assert 'culm_input_requests_total{outcome="approved",tool_name="bash"} 1.0' in metrics


async def test_bad_session_input_settings_are_422(client: httpx2.AsyncClient) -> None:
    bad: list[dict[str, Any]] = [
        {"input_timeout": 0},
        {"input_timeout_action": "explode"},
        {"require_approval": [""]},
        {"require_approval": "bash"},
        {"require_approval": [3]},
    ]
    for fields in bad:
        response = await client.post("/v1/sessions", json={"model": "scripted:echo", **fields})
        assert response.status_code == 422, fields
        assert next(iter(fields)) in response.text, response.text
        agent = await client.put("/v1/agents/strict", json={"model": "scripted:echo", **fields})
        assert agent.status_code == 422, fields
    made = await client.post(
        "/v1/sessions", json={"model": "scripted:echo", "require_approval": ["write_*"]}
    )
    assert made.json()["require_approval"] == ["write_*"]
    assert made.json()["input_timeout_action"] == "deny"


async def test_a_childs_approval_shows_in_the_parents_stream_and_is_answered_on_the_child(
    server: Server, client: httpx2.AsyncClient
) -> None:
    scripts = server.engine.scripts
    scripts.register(
        "child", {"turns": [[call("write_file", path="c.txt", content="x")], [{"text": "c"}]]}
    )
    spawn = call("spawn_agent", task="write", model="scripted:child", tools=["write_file"])
    scripts.register("parent", {"turns": [[spawn], [{"text": "parent done"}]]})
    created = await client.post(
        "/v1/runs",
        json={
            "message": "go",
            "model": "scripted:parent",
            "tools": ["spawn_agent", "write_file"],
            "require_approval": ["write_file"],
        },
    )
    run_id = created.json()["run_id"]
    async with client.stream("GET", f"/v1/runs/{run_id}/events") as response:
        async for frame in frames(response):
            if frame.event != "sub_agent_event" or frame.json["event"]["type"] != "input_requested":
                continue
            asked = frame.json
            child_run_id, request = asked["child_run_id"], asked["event"]
            # The parent's pending input names the child's request, on the child's run.
            [listed] = (await client.get(f"/v1/runs/{run_id}/input")).json()["requests"]
            assert (listed["run_id"], listed["request_id"]) == (
                child_run_id,
                request["request_id"],
            )
            parent = (await client.get(f"/v1/runs/{run_id}")).json()
            assert parent["status"] == "running"  # it waits on its child, holding its task
            assert parent["children"][0]["status"] == "waiting"
            answered = await client.post(
                f"/v1/runs/{child_run_id}/input",
                json={"request_id": request["request_id"], "approve": True},
            )
            assert answered.status_code == 200
            break
        else:
            pytest.fail("the parent's stream showed no input_requested of its child")
    done = (await client.get(f"/v1/runs/{run_id}/wait", params={"timeout": 20})).json()
    assert done["status"] == "completed"
