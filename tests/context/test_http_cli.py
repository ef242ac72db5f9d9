"""Compaction through the HTTP API (a real server) and ``culm compact`` (the real CLI)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import httpx2
import pytest

from culm.context.view import SUMMARY_HEADER
from tests.api.conftest import running_server
from tests.cli.conftest import TIMEOUT, clean_env, culm_command, restore_sigint
from tests.context.conftest import model_of, windowed_settings
from tests.context.windowed import BigOutputTool, WindowedUpstream


@pytest.fixture(autouse=True)
def _on_each_backend(backend: str) -> str:
    return backend


async def _culm(home: Path, *args: str) -> tuple[int, str, str]:
    home.mkdir(exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        *culm_command(*args),
        env=clean_env(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=restore_sigint,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_compact_over_http_and_the_two_views(
    tmp_path: Path, upstream: WindowedUpstream
) -> None:
    big_output = BigOutputTool(size=2000)  # four runs fit the window: nothing compacted yet
    settings = windowed_settings(tmp_path, upstream, context_auto_compact=False)
    async with (
        running_server(settings, tools=[big_output]) as server,
        httpx2.AsyncClient(base_url=server.url, timeout=60) as http,
    ):
        created = await http.post(
            "/v1/sessions", json={"model": model_of(upstream), "tools": ["big_output"]}
        )
        session_id = created.json()["session_id"]
        for n in range(4):
            run = await http.post(f"/v1/sessions/{session_id}/runs", json={"message": f"t{n}"})
            await http.get(f"/v1/runs/{run.json()['run_id']}/wait", params={"timeout": 30})
        stored = (await http.get(f"/v1/sessions/{session_id}/messages")).json()["messages"]

        answer = await http.post(f"/v1/sessions/{session_id}/compact")
        after = (await http.get(f"/v1/sessions/{session_id}/messages")).json()["messages"]
        view = await http.get(f"/v1/sessions/{session_id}/messages", params={"view": "model"})
        listed = (await http.get(f"/v1/sessions/{session_id}/compactions")).json()
        bad_view = await http.get(f"/v1/sessions/{session_id}/messages", params={"view": "x"})
        unknown = await http.post("/v1/sessions/nope/compact")

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["trigger"], body["seq"]) == ("manual", 1)
    assert body["summary_model"] == model_of(upstream)
    assert body["messages_compacted"] > 0 and body["tokens_after"] < body["tokens_before"]
    assert body["summary_usage"]["total_tokens"] > 0
    assert len(stored) == 16 and after == stored  # the originals, untouched
    model_view = view.json()["messages"]
    assert model_view[0]["content"].startswith(SUMMARY_HEADER)
    assert len(model_view) < len(stored)
    assert [c["seq"] for c in listed["compactions"]] == [1]
    assert bad_view.status_code == 422
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "not_found")


async def test_compact_is_409_while_a_run_is_active(tmp_path: Path) -> None:
    settings = windowed_settings(tmp_path, WindowedUpstream("openai", 4096))
    async with (
        running_server(settings) as server,
        httpx2.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        run = await server.engine.run("count", model="scripted:slow")
        refused = await http.post(f"/v1/sessions/{run.session_id}/compact")
        await server.engine.cancel(run.run_id, wait=True, timeout=20)
        allowed = await http.post(f"/v1/sessions/{run.session_id}/compact")
    assert refused.status_code == 409
    assert refused.json()["error"] == {
        "code": "session_busy",
        "message": refused.json()["error"]["message"],
        "run_id": run.run_id,
    }
    assert allowed.status_code == 200
    assert allowed.json()["messages_compacted"] == 0  # nothing old enough to compact yet


async def test_culm_compact_command(tmp_path: Path, upstream: WindowedUpstream) -> None:
    big_output = BigOutputTool(size=2000)
    settings = windowed_settings(tmp_path, upstream, context_auto_compact=False)
    async with running_server(settings, tools=[big_output]) as server:
        engine = server.engine
        session = await engine.create_session(model=model_of(upstream), tools=["big_output"])
        for n in range(4):
            run = await engine.start_run(session.session_id, f"t{n}")
            await engine.wait(run.run_id, timeout=30)
        code, out, err = await _culm(
            tmp_path / "cli", "compact", session.session_id, "--server", server.url
        )
        again = await _culm(
            tmp_path / "cli", "compact", session.session_id, "--json", "--server", server.url
        )
        missing = await _culm(tmp_path / "cli", "compact", "nope", "--server", server.url)
        stored = await engine.list_compactions(session.session_id)
    assert code == 0, err
    assert out.startswith("compacted ") and not out.startswith("compacted 0 ") and "tokens" in out
    nothing = json.loads(again[1])  # nothing new to compact: said, and nothing stored
    assert again[0] == 0 and (nothing["seq"], nothing["messages_compacted"]) == (0, 0)
    assert missing[0] != 0 and "nope" in missing[2]
    assert [c.seq for c in stored] == [1]
