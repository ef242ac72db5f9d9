"""Waiting is durable: a `culm serve` killed with -9 while 100 runs wait for approval, then
restarted on the same database: every run is still `waiting` (recovery never touches it), and
the answers given to the new process complete them all."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import httpx2
import pytest

from tests.api.test_serve import culm_serve

WAITING = 100
LIST = {"tool_call": {"name": "list_dir", "arguments": {"path": "."}}}
SCRIPT = {"turns": [[LIST], [{"text": "ok"}]]}


async def _statuses(client: httpx2.AsyncClient) -> dict[str, str]:
    runs = (await client.get("/v1/runs", params={"limit": 1000})).json()["runs"]
    return {run["run_id"]: run["status"] for run in runs}


async def _until(client: httpx2.AsyncClient, status: str, count: int) -> dict[str, str]:
    async with asyncio.timeout(90):
        while True:
            statuses = await _statuses(client)
            if sum(1 for s in statuses.values() if s == status) >= count:
                return statuses
            await asyncio.sleep(0.1)


async def _approve(client: httpx2.AsyncClient, run_id: str) -> None:
    [request] = (await client.get(f"/v1/runs/{run_id}/input")).json()["requests"]
    answer = {"request_id": request["request_id"], "approve": True}
    assert (await client.post(f"/v1/runs/{run_id}/input", json=answer)).status_code == 200


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_killed_server_leaves_its_waiting_runs_waiting(
    tmp_path: Path, database_url: str
) -> None:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "lister.json").write_text(json.dumps(SCRIPT))
    env = {"CULM_DATABASE_URL": database_url, "CULM_RECOVERY_POLICY": "error"}
    body = {"message": "go", "model": "scripted:lister", "tools": ["list_dir"]}
    body["require_approval"] = ["list_dir"]  # type: ignore[assignment]
    async with (
        culm_serve(tmp_path, **env) as (process, url),
        httpx2.AsyncClient(base_url=url, timeout=30) as client,
    ):
        posted = await asyncio.gather(*(client.post("/v1/runs", json=body) for _ in range(WAITING)))
        run_ids = {response.json()["run_id"] for response in posted}
        await _until(client, "waiting", WAITING)
        process.send_signal(signal.SIGKILL)
        assert await process.wait() == -signal.SIGKILL
    async with (
        culm_serve(tmp_path, **env) as (_, url),
        httpx2.AsyncClient(base_url=url, timeout=30) as client,
    ):
        # The new process swept at its start (and, on SQLite, took over the dead one's runs).
        assert await _statuses(client) == dict.fromkeys(run_ids, "waiting")
        await asyncio.gather(*(_approve(client, run_id) for run_id in run_ids))
        statuses = await _until(client, "completed", WAITING)
        assert statuses == dict.fromkeys(run_ids, "completed")
        for run_id in list(run_ids)[:3]:
            events = (await client.get(f"/v1/runs/{run_id}/events")).text
            assert "run_recovered" not in events and "input_received" in events
