"""The v1 routes over a real server: shapes, status codes, errors, auth, limits."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from tests.api.conftest import Server, ServerFactory


@pytest.fixture
async def client(server: Server) -> Any:
    async with httpx2.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


async def test_health(client: httpx2.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_session_lifecycle(client: httpx2.AsyncClient) -> None:
    created = await client.post(
        "/v1/sessions",
        json={"model": "scripted:echo", "system_prompt": "hi", "metadata": {"team": "a"}},
    )
    assert created.status_code == 201
    session = created.json()
    assert session["kind"] == "root"
    assert session["metadata"] == {"team": "a"}
    assert session["created_at"].endswith("Z")
    session_id = session["session_id"]
    assert (await client.get(f"/v1/sessions/{session_id}")).json() == session
    listed = (await client.get("/v1/sessions", params={"limit": 5})).json()
    assert [s["session_id"] for s in listed["sessions"]] == [session_id]
    run = (await client.post(f"/v1/sessions/{session_id}/runs", json={"message": "yo"})).json()
    done = (await client.get(f"/v1/runs/{run['run_id']}/wait")).json()
    assert done["status"] == "completed"
    messages = (await client.get(f"/v1/sessions/{session_id}/messages")).json()["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "yo"),
        ("assistant", "You said: yo"),
    ]
    runs = (await client.get(f"/v1/sessions/{session_id}/runs")).json()["runs"]
    assert [r["run_id"] for r in runs] == [run["run_id"]]
    assert (await client.delete(f"/v1/sessions/{session_id}")).status_code == 204
    assert (await client.get(f"/v1/sessions/{session_id}")).status_code == 404


async def test_headless_run_and_run_fields(client: httpx2.AsyncClient) -> None:
    response = await client.post(
        "/v1/runs", json={"message": "look", "model": "scripted:demo", "tools": ["read"]}
    )
    assert response.status_code == 202
    run = response.json()
    assert run["status"] in {"pending", "running"}
    done = (await client.get(f"/v1/runs/{run['run_id']}/wait", params={"timeout": 10})).json()
    for field in (
        "run_id", "session_id", "parent_run_id", "status", "error", "created_at", "started_at",
        "completed_at", "round_count", "last_tool_name", "last_tool_phase", "last_event_at",
        "last_seq", "usage", "model", "trigger", "attempt",
    ):  # fmt: skip
        assert field in done, field
    assert done["round_count"] == 2
    assert done["last_tool_name"] == "list_dir"
    assert done["last_tool_phase"] == "finished"
    assert done["usage"]["total_tokens"] > 0
    listed = (await client.get("/v1/runs", params={"status": "completed"})).json()["runs"]
    assert run["run_id"] in [r["run_id"] for r in listed]


async def test_busy_session_409_enqueue_and_interrupt(client: httpx2.AsyncClient) -> None:
    session = (await client.post("/v1/sessions", json={"model": "scripted:slow"})).json()
    url = f"/v1/sessions/{session['session_id']}/runs"
    first = (await client.post(url, json={"message": "one"})).json()
    busy = await client.post(url, json={"message": "two"})
    assert busy.status_code == 409
    assert busy.json()["error"]["code"] == "already_running"
    assert busy.json()["error"]["run_id"] == first["run_id"]
    queued = (
        await client.post(
            url, json={"message": "q", "multitask": "enqueue", "model": "scripted:echo"}
        )
    ).json()
    assert queued["queued"] is True
    interrupting = await client.post(
        url, json={"message": "now", "multitask": "interrupt", "model": "scripted:echo"}
    )
    assert interrupting.status_code == 202
    now = (await client.get(f"/v1/runs/{interrupting.json()['run_id']}/wait")).json()
    assert now["status"] == "completed"
    assert (await client.get(f"/v1/runs/{first['run_id']}")).json()["status"] == "cancelled"
    later = (await client.get(f"/v1/runs/{queued['run_id']}/wait")).json()
    assert later["status"] == "completed"
    assert later["started_at"] >= now["completed_at"]


async def test_wait_timeout_is_408_with_the_run(client: httpx2.AsyncClient) -> None:
    run = (await client.post("/v1/runs", json={"message": "x", "model": "scripted:slow"})).json()
    response = await client.get(f"/v1/runs/{run['run_id']}/wait", params={"timeout": 0.1})
    assert response.status_code == 408
    assert response.json()["error"]["code"] == "timeout"
    assert response.json()["run"]["run_id"] == run["run_id"]
    cancelled = await client.post(f"/v1/runs/{run['run_id']}/cancel", params={"wait": "true"})
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    again = await client.post(f"/v1/runs/{run['run_id']}/cancel", params={"wait": "true"})
    assert again.json()["status"] == "cancelled"  # idempotent


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "field"),
    [
        ("get", "/v1/runs/missing", None, 404, "not_found", None),
        ("post", "/v1/runs/missing/cancel", None, 404, "not_found", None),
        ("get", "/v1/runs/missing/wait", None, 404, "not_found", None),
        ("get", "/v1/runs/missing/events", None, 404, "not_found", None),
        ("get", "/v1/sessions/missing", None, 404, "not_found", None),
        ("get", "/v1/sessions/missing/events", None, 404, "not_found", None),
        ("post", "/v1/sessions/missing/runs", {"message": "x"}, 404, "not_found", None),
        ("get", "/no/such/route", None, 404, "not_found", None),
        ("post", "/v1/runs", {}, 422, "invalid_request", "message"),
        ("post", "/v1/runs", {"message": ""}, 422, "invalid_request", "message"),
        ("post", "/v1/sessions", {"tools": "read"}, 422, "invalid_request", "tools"),
        ("post", "/v1/sessions", {"model": "gpt-4o"}, 422, "invalid_request", "model"),
        ("post", "/v1/sessions", {"tools": ["teleport"]}, 422, "invalid_request", "tools"),
        ("post", "/v1/sessions", {"surprise": 1}, 422, "invalid_request", "surprise"),
        ("get", "/v1/runs", {"status": "bogus"}, 422, "invalid_request", "status"),
        ("get", "/v1/runs", {"limit": "0"}, 422, "invalid_request", "limit"),
    ],
)
async def test_errors_have_one_format(
    client: httpx2.AsyncClient,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    status: int,
    code: str,
    field: str | None,
) -> None:
    if method == "get":
        response = await client.get(path, params=body)
    else:
        response = await client.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert error.get("field") == field


async def test_busy_session_cannot_be_deleted(client: httpx2.AsyncClient) -> None:
    run = (await client.post("/v1/runs", json={"message": "x", "model": "scripted:slow"})).json()
    response = await client.delete(f"/v1/sessions/{run['session_id']}")
    assert response.status_code == 409
    assert response.json()["error"] == {
        "code": "session_busy",
        "message": response.json()["error"]["message"],
        "run_id": run["run_id"],
    }
    await client.post(f"/v1/runs/{run['run_id']}/cancel", params={"wait": "true"})


async def test_request_body_limit(make_server: ServerFactory) -> None:
    async with (
        make_server(max_request_bytes=2048) as server,
        httpx2.AsyncClient(base_url=server.url) as client,
    ):
        big = {"message": "x" * 5000, "model": "scripted:echo"}
        response = await client.post("/v1/runs", json=big)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "body_too_large"

        async def chunks() -> Any:  # no content-length: counted as it streams
            for _ in range(10):
                yield b"x" * 512

        streamed = await client.post(
            "/v1/runs", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        small = await client.post("/v1/runs", json={"message": "ok", "model": "scripted:echo"})
        assert small.status_code == 202


async def test_api_key_guards_every_route_but_health(make_server: ServerFactory) -> None:
    async with (
        make_server(api_key="s3cret") as server,
        httpx2.AsyncClient(base_url=server.url) as client,
    ):
        assert (await client.get("/health")).status_code == 200
        for path in ("/v1/sessions", "/v1/runs", "/v1/runs/x/events", "/openapi.json"):
            denied = await client.get(path)
            assert denied.status_code == 401, path
            assert denied.json()["error"]["code"] == "unauthorized"
        wrong = await client.get("/v1/runs", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = await client.get("/v1/runs", headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200


async def test_a_run_lists_its_sub_agent_children(
    server: Server, client: httpx2.AsyncClient
) -> None:
    spawn = {
        "tool_call": {"name": "spawn_agent", "arguments": {"task": "t", "model": "scripted:echo"}}
    }
    server.engine.scripts.register("boss", {"turns": [[spawn, spawn], [{"text": "ok"}]]})
    run = (
        await client.post(
            "/v1/runs", json={"message": "go", "model": "scripted:boss", "tools": ["spawn_agent"]}
        )
    ).json()
    await client.get(f"/v1/runs/{run['run_id']}/wait")
    detail = (await client.get(f"/v1/runs/{run['run_id']}")).json()
    assert len(detail["children"]) == 2
    assert {c["status"] for c in detail["children"]} == {"completed"}
    child_total = 0
    for child in detail["children"]:
        child_run = (await client.get(f"/v1/runs/{child['run_id']}")).json()
        assert child_run["parent_run_id"] == run["run_id"]
        assert child_run["trigger"] == "spawn"
        assert child_run["children"] == []
        child_total += child_run["usage"]["total_tokens"]
    assert detail["usage_with_descendants"]["total_tokens"] == (
        detail["usage"]["total_tokens"] + child_total
    )


async def test_runs_list_filters_by_trigger_and_model_and_pages_by_offset(
    client: httpx2.AsyncClient,
) -> None:
    made = []
    for model in ["scripted:echo", "scripted:demo", "scripted:echo"]:
        run = (await client.post("/v1/runs", json={"message": "x", "model": model})).json()
        await client.get(f"/v1/runs/{run['run_id']}/wait")
        made.append(run["run_id"])

    async def listed(**params: Any) -> list[str]:
        response = await client.get("/v1/runs", params=params)
        assert response.status_code == 200, response.text
        return [r["run_id"] for r in response.json()["runs"]]

    everything = await listed()
    assert set(everything) == set(made) and len(everything) == 3
    assert set(await listed(model="scripted:echo")) == {made[0], made[2]}
    assert await listed(model="scripted:none") == []
    assert set(await listed(trigger="api")) == set(made)
    assert await listed(trigger="schedule") == []
    # pages: the same order, cut where asked, nothing twice
    pages = [await listed(limit=2, offset=0), await listed(limit=2, offset=2)]
    assert pages[0] + pages[1] == everything and len(pages[1]) == 1
    assert await listed(offset=3) == []
    assert (
        await listed(model="scripted:echo", limit=1, offset=1)
        == [r for r in everything if r in {made[0], made[2]}][1:]
    )
    for bad in [{"offset": -1}, {"trigger": "nope"}, {"model": "m" * 201}]:
        assert (await client.get("/v1/runs", params=bad)).status_code == 422
