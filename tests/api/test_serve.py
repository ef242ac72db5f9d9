"""`culm serve` as a real process: start-up, clean stop with open streams, crash and restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.api.conftest import free_port
from tests.api.sse import frames

STUCK = {"turns": [[{"text": "working"}, {"delay": 3600}]]}


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CULM_", "OPENAI_", "ANTHROPIC_"))
    }
    return {**env, "CULM_HOME": str(home), **extra}


@asynccontextmanager
async def culm_serve(
    home: Path, **extra: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "culm", "serve", "--port", str(port),
        env=_env(home, **extra), stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx2.AsyncClient(base_url=url) as client, asyncio.timeout(30):
            while True:
                try:
                    if (await client.get("/health")).status_code == 200:
                        break
                except httpx2.TransportError:
                    await asyncio.sleep(0.05)
        yield process, url
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def _start_runs(url: str, count: int) -> list[str]:
    async with httpx2.AsyncClient(base_url=url) as client:
        runs = []
        for _ in range(count):
            response = await client.post(
                "/v1/runs", json={"message": "go", "model": "scripted:stuck"}
            )
            runs.append(response.json()["run_id"])
        for run_id in runs:  # wait until each is really running
            async with client.stream("GET", f"/v1/runs/{run_id}/events") as response:
                async for frame in frames(response):
                    if frame.event == "token":
                        break
        return runs


def _scripts(home: Path, **scripts: dict[str, Any]) -> None:
    (home / "scripts").mkdir(parents=True, exist_ok=True)
    for name, script in scripts.items():
        (home / "scripts" / f"{name}.json").write_text(json.dumps(script))


@pytest.mark.timeout(90)
async def test_a_clean_stop_ends_streams_and_cancels_runs(tmp_path: Path) -> None:
    _scripts(tmp_path, stuck=STUCK)
    async with culm_serve(tmp_path) as (process, url):
        [run_id] = await _start_runs(url, 1)
        async with (
            httpx2.AsyncClient(base_url=url, timeout=30) as client,
            client.stream("GET", f"/v1/runs/{run_id}/events") as response,
        ):
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                seen = [f async for f in frames(response) if f.comment is None]
            # The run is cancelled first, so the open stream ends with its terminal event
            # (and cleanly: a cut chunked body would have raised).
            assert seen[-1].event == "cancelled"
            assert seen[-1].json["reason"] == "shutdown"
        async with asyncio.timeout(20):
            code = await process.wait()
        assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its shutdown
    async with culm_serve(tmp_path) as (_, url), httpx2.AsyncClient(base_url=url) as client:
        run = (await client.get(f"/v1/runs/{run_id}")).json()
        assert run["status"] == "cancelled"
        assert (await client.get("/v1/runs", params={"status": "running"})).json()["runs"] == []


@pytest.mark.timeout(90)
async def test_a_killed_server_recovers_its_runs_on_restart(tmp_path: Path) -> None:
    _scripts(tmp_path, stuck=STUCK)
    async with culm_serve(tmp_path) as (process, url):
        run_ids = await _start_runs(url, 3)
        process.kill()
    async with culm_serve(tmp_path) as (_, url), httpx2.AsyncClient(base_url=url) as client:
        assert (await client.get("/v1/runs", params={"status": "running"})).json()["runs"] == []
        for run_id in run_ids:
            run = (await client.get(f"/v1/runs/{run_id}")).json()
            assert (run["status"], run["error"]) == ("error", "interrupted")
            async with client.stream("GET", f"/v1/runs/{run_id}/events") as response:
                events = [f.event async for f in frames(response) if f.comment is None]
            assert events[-2:] == ["run_recovered", "error"]


@pytest.mark.timeout(90)
async def test_recover_policy_hands_runs_to_the_next_start(tmp_path: Path) -> None:
    _scripts(tmp_path, stuck=STUCK)
    policy = {"CULM_SHUTDOWN_POLICY": "recover", "CULM_RECOVERY_POLICY": "requeue"}
    async with culm_serve(tmp_path, **policy) as (process, url):
        [run_id] = await _start_runs(url, 1)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await process.wait() in (0, -signal.SIGTERM)
    _scripts(tmp_path, stuck={"turns": [[{"text": "finished after the restart"}]]})
    async with (
        culm_serve(tmp_path, **policy) as (_, url),
        httpx2.AsyncClient(base_url=url) as client,
    ):
        run = (await client.get(f"/v1/runs/{run_id}/wait", params={"timeout": 20})).json()
        assert (run["status"], run["attempt"]) == ("completed", 2)


def test_refuses_a_public_bind_without_an_api_key(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "culm", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        env=_env(tmp_path), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "CULM_API_KEY" in lines[0]
    assert "Traceback" not in done.stderr


@pytest.mark.timeout(120)
async def test_racing_interrupts_leave_no_run_pending_and_sigterm_ends_the_server(
    tmp_path: Path,
) -> None:
    _scripts(tmp_path, ticks={"turns": [[{"delay": 0.001}, {"text": "t"}] * 20]})
    async with (
        culm_serve(tmp_path) as (process, url),
        httpx2.AsyncClient(base_url=url, timeout=30) as client,
    ):
        session = (await client.post("/v1/sessions", json={"model": "scripted:ticks"})).json()
        path = f"/v1/sessions/{session['session_id']}/runs"
        run_ids: list[str] = []
        for _ in range(10):
            answers = await asyncio.gather(
                *(
                    client.post(path, json={"message": "go", "multitask": "interrupt"})
                    for _ in range(10)
                )
            )
            run_ids += [answer.json()["run_id"] for answer in answers]
        for run_id in run_ids:
            waited = await client.get(f"/v1/runs/{run_id}/wait", params={"timeout": 10})
            assert waited.status_code == 200, waited.text
            assert waited.json()["status"] in ("completed", "cancelled")
        last = await client.post(path, json={"message": "free?", "multitask": "reject"})
        assert last.status_code == 202
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await process.wait() in (0, -signal.SIGTERM)
