"""The metrics routes and ``GET /metrics`` over a real server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from culm.metrics import events as m
from tests.api.conftest import Server, ServerFactory


@pytest.fixture
async def client(server: Server) -> Any:
    async with httpx2.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


async def _finished_runs(server: Server, client: httpx2.AsyncClient) -> list[dict[str, Any]]:
    server.engine.scripts.register(
        "metered",
        {
            "turns": [
                [{"tool_call": {"name": "list_dir", "arguments": {}}}, {"usage": {"prompt_tokens": 100, "completion_tokens": 7}}],
                [{"text": "done"}, {"usage": {"prompt_tokens": 130, "completion_tokens": 5}}],
            ]
        },
    )  # fmt: skip
    runs = []
    for _ in range(2):
        body = {"message": "go", "model": "scripted:metered", "tools": ["read"]}
        run = (await client.post("/v1/runs", json=body)).json()
        runs.append((await client.get(f"/v1/runs/{run['run_id']}/wait")).json())
    await server.engine.metrics.flush()
    return runs


async def test_summary_models_sessions_and_detail(
    server: Server, client: httpx2.AsyncClient
) -> None:
    runs = await _finished_runs(server, client)
    today = datetime.now(UTC).date().isoformat()
    summary = (await client.get("/v1/metrics/summary", params={"start_date": today})).json()
    assert (summary["runs"], summary["rounds"], summary["tool_calls"]) == (2, 4, 2)
    assert summary["tokens"]["prompt_tokens"] == 460
    assert summary["tokens"]["completion_tokens"] == 24
    models = (await client.get("/v1/metrics/models")).json()["models"]
    assert [(x["model"], x["runs"], x["rounds"]) for x in models] == [("scripted:metered", 2, 4)]
    sessions = (await client.get("/v1/metrics/sessions", params={"limit": 1})).json()["sessions"]
    assert [s["session_id"] for s in sessions] == [runs[1]["session_id"]]
    detail = (await client.get(f"/v1/metrics/sessions/{runs[0]['session_id']}")).json()
    assert [len(r["tool_calls"]) for r in detail["rounds"]] == [1, 0]
    assert detail["rounds"][0]["tool_calls"][0]["tool_name"] == "list_dir"
    assert detail["tokens"]["total_tokens"] == 242


async def test_daily_tools_forward_and_system(server: Server, client: httpx2.AsyncClient) -> None:
    await _finished_runs(server, client)
    started = m.RequestStarted(
        request_id="q1", endpoint="openai.chat_completions", model="gpt-4o", is_stream=True
    )
    done = m.RequestCompleted(
        request_id="q1", status_code=200, status=m.ForwardStatus.SUCCESS, latency_ms=80
    )
    assert server.engine.metrics.emit(started) and server.engine.metrics.emit(done)
    await server.engine.metrics.flush()
    weeks = (
        await client.get("/v1/metrics/daily", params={"days": 14, "granularity": "week"})
    ).json()
    assert all(datetime.fromisoformat(p["start"]).weekday() == 0 for p in weeks["periods"])
    assert sum(p["rounds"] for p in weeks["periods"]) == 4
    tools = (await client.get("/v1/metrics/tools")).json()["tools"]
    assert [(t["tool_name"], t["calls"], t["failures"]) for t in tools] == [("list_dir", 2, 0)]
    forward = (await client.get("/v1/metrics/forward/summary")).json()
    assert (forward["requests"], forward["succeeded"], forward["streaming"]) == (1, 1, 1)
    endpoints = (await client.get("/v1/metrics/forward/endpoints")).json()["endpoints"]
    assert [e["endpoint"] for e in endpoints] == ["openai.chat_completions"]
    requests = await client.get("/v1/metrics/forward/requests", params={"model": "gpt-4o"})
    assert [r["request_id"] for r in requests.json()["requests"]] == ["q1"]
    system = (await client.get("/v1/metrics/system")).json()
    assert (system["dropped"], system["queue_depth"], system["worker"]["state"]) == (
        0,
        0,
        "running",
    )


async def test_errors(client: httpx2.AsyncClient) -> None:
    today = datetime.now(UTC).date()
    inverted = {
        "start_date": today.isoformat(),
        "end_date": (today - timedelta(days=1)).isoformat(),
    }
    assert (await client.get("/v1/metrics/summary", params=inverted)).json()["runs"] == 0
    response = await client.get("/v1/metrics/summary", params={"start_date": "0"})
    assert (response.status_code, response.json()["error"]["field"]) == (422, "start_date")
    response = await client.get("/v1/metrics/sessions/nobody")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
    assert (
        await client.get("/v1/metrics/daily", params={"granularity": "year"})
    ).status_code == 422
    assert (await client.get("/v1/metrics/sessions", params={"limit": 1001})).status_code == 422


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_prometheus_exposition(server: Server, client: httpx2.AsyncClient) -> None:
    await _finished_runs(server, client)
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = _samples(response.text)
    genai = {
        "gen_ai_operation_name": "chat",
        "gen_ai_provider_name": "scripted",
        "gen_ai_request_model": "metered",
        "gen_ai_response_model": "",
        "server_address": "",
        "culm_source": "run",
    }
    tokens = frozenset({**genai, "gen_ai_token_type": "input"}.items())
    assert samples[("gen_ai_client_token_usage_sum", tokens)] == 460
    assert samples[("gen_ai_client_token_usage_count", tokens)] == 4
    duration = frozenset({**genai, "error_type": ""}.items())
    assert samples[("gen_ai_client_operation_duration_seconds_count", duration)] == 4
    assert samples[("culm_runs_finished_total", frozenset({("status", "completed")}))] == 2
    tool = frozenset({("tool_name", "list_dir"), ("outcome", "success")})
    assert samples[("culm_tool_calls_total", tool)] == 2
    assert samples[("culm_runs_active", frozenset())] == 0
    assert samples[("culm_metrics_events_dropped_total", frozenset())] == 0


async def test_metrics_need_the_key_when_one_is_set(make_server: ServerFactory) -> None:
    async with (
        make_server(api_key="sekret") as server,
        httpx2.AsyncClient(base_url=server.url) as client,
    ):
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/v1/metrics/summary")).status_code == 401
        headers = {"Authorization": "Bearer sekret"}
        assert (await client.get("/metrics", headers=headers)).status_code == 200
