"""Prompt cancel across processes: 2 API processes (``serve --no-worker``) + 2 workers on one
PostgreSQL database and one Redis.

A cancel from either API process reaches a run on either worker at once through the owner's
control channel on Redis: in a model stream, in a ``bash`` command (its processes are gone, by
pid), in a sub-agent tree (every run of it cancelled). The workers' heartbeat is made slow here
(``HEARTBEAT`` s) so that a cancel done well within it cannot have come from the heartbeat's
fallback. With Redis stopped, a cancel still ends the run, within the heartbeat; once Redis is
back, cancels are prompt again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import psutil
import pytest
import redis.asyncio as redis

from tests.distributed import invariants
from tests.distributed.harness import (
    Culm,
    Topology,
    poll,
    rows,
    start_runs,
    statuses,
    streaming,
    topology,
    write_scripts,
)
from tests.processes import escapees_started, escaping_command, marked, new_marker
from tests.redisserver import private_redis

pytestmark = pytest.mark.distributed

HEARTBEAT = 20.0
LEASE = 60.0
# A prompt cancel: from the request to the run's terminal status, well under one heartbeat
# (a loaded machine included); the target is p50 100 ms, p99 1 s (bench).
PROMPT = 5.0
REASON = "cancelled by request"


def _env(redis_url: str, *, heartbeat: float = HEARTBEAT, lease: float = LEASE) -> dict[str, str]:
    return {
        "CULM_REDIS_URL": redis_url,
        "CULM_REDIS_PREFIX": f"culm-test-{uuid.uuid4().hex[:12]}:",
        "CULM_HEARTBEAT_SECONDS": str(heartbeat),
        "CULM_LEASE_SECONDS": str(lease),
    }


class Deployment:
    """Two API processes and two workers; ``apis[i]`` is a client of API process ``i``."""

    def __init__(self, top: Topology, apis: list[Culm], workers: list[Culm]) -> None:
        self.top = top
        self.apis = apis
        self.workers = workers
        self.clients = [httpx2.AsyncClient(base_url=api.url or "", timeout=60) for api in apis]

    async def listening(self, redis_url: str, prefix: str) -> None:
        """Until every worker listens on its control channel (it subscribes after it starts)
        and every API process sends on it: an API whose Redis link is down (it has not pinged
        Redis back yet after an outage, up to 5 s apart) leaves a cancel to the heartbeat."""
        client = redis.Redis.from_url(redis_url)
        channels = [f"{prefix}worker:{worker.worker_id}" for worker in self.workers]
        try:

            async def subscribed() -> bool:
                counts = await client.pubsub_numsub(*channels)
                return all(count >= 1 for _, count in counts)

            await poll(subscribed, timeout=30, what="the workers listening for cancels")
        finally:
            await client.aclose()

        async def sending() -> bool:
            answers = [await api.get("/health") for api in self.clients]
            return all(answer.json()["redis"] == "ok" for answer in answers)

        await poll(sending, timeout=30, what="the API processes' Redis links up")

    async def cancel(self, api: int, run_id: str) -> tuple[dict[str, Any], float]:
        """``POST /v1/runs/{id}/cancel?wait=true`` on API process ``api``: the run as answered
        and the seconds the request took."""
        sent = time.monotonic()
        response = await self.clients[api].post(
            f"/v1/runs/{run_id}/cancel", params={"wait": "true", "timeout": 60}
        )
        took = time.monotonic() - sent
        assert response.status_code == 200, response.text
        return response.json(), took

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


async def _deploy(top: Topology, *, concurrency: int = 4) -> Deployment:
    """Two API processes and two workers; each worker holds at most ``concurrency`` runs, so
    ``2 * concurrency`` runs started together run on both (one worker that wakes first would
    otherwise claim them all)."""
    apis = [await top.start_api(), await top.start_api()]
    workers = await top.start_workers(2, CULM_WORKER_CONCURRENCY=str(concurrency))
    deployment = Deployment(top, apis, workers)
    await deployment.listening(top.env["CULM_REDIS_URL"], top.env["CULM_REDIS_PREFIX"])
    return deployment


@pytest.fixture
async def deployed(postgres_url: str, redis_url: str, tmp_path: Path) -> AsyncIterator[Deployment]:
    home = tmp_path / "home"
    async with topology(postgres_url, home, **_env(redis_url)) as top:
        deployment = await _deploy(top)
        try:
            yield deployment
        finally:
            await deployment.aclose()
        top.assert_clean_logs()


async def _running_on_both(top: Topology, deployment: Deployment, run_ids: list[str]) -> None:
    async def running() -> bool:
        found = await statuses(top, run_ids)
        return len(found) == len(run_ids) and all(r.status == "running" for r in found.values())

    await poll(running, timeout=60, what="every run running")
    owners = {row.owner for row in (await statuses(top, run_ids)).values()}
    assert owners == {worker.worker_id for worker in deployment.workers}, owners


async def _last_event(top: Topology, run_id: str) -> Any:
    found = await rows(
        top,
        "SELECT type, body FROM run_events WHERE run_id = :run_id ORDER BY seq DESC LIMIT 1",
        run_id=run_id,
    )
    return found[0]


@pytest.mark.timeout(180)
async def test_a_cancel_from_either_api_ends_a_model_stream_on_either_worker_at_once(
    deployed: Deployment,
) -> None:
    top = deployed.top
    write_scripts(top.home, long=streaming(120, every=0.05))
    async with top.client() as client:
        run_ids = await start_runs(client, 8, "scripted:long")
    await _running_on_both(top, deployed, run_ids)

    for i, run_id in enumerate(run_ids):
        run, took = await deployed.cancel(i % 2, run_id)
        assert run["status"] == "cancelled", run
        assert took < PROMPT, f"cancel {i} took {took:.2f} s (heartbeat {HEARTBEAT} s)"
        last = await _last_event(top, run_id)
        assert last.type == "cancelled" and REASON in last.body, last
    for worker in deployed.workers:  # nothing waited for a heartbeat or a lease
        assert "lease lost" not in worker.log()
    await invariants.check(top.db)


@pytest.mark.timeout(180)
async def test_a_cancel_from_the_other_api_ends_a_bash_command_and_its_processes(
    deployed: Deployment,
) -> None:
    top = deployed.top
    marker = new_marker()
    call = {"tool_call": {"name": "bash", "arguments": {"command": escaping_command(marker)}}}
    write_scripts(top.home, shell={"turns": [[call], [{"text": "done"}]]})
    response = await deployed.clients[0].post(
        "/v1/runs", json={"message": "go", "model": "scripted:shell", "tools": ["bash"]}
    )
    assert response.status_code == 202, response.text
    run_id = response.json()["run_id"]
    await poll(_async(lambda: escapees_started(marker)), timeout=30, what="the command started")
    pids = [process.pid for process in marked(marker)]
    assert len(pids) >= 3, "the command (bash, its reaper) and the escapees run"

    run, took = await deployed.cancel(1, run_id)

    assert run["status"] == "cancelled", run
    assert took < PROMPT, f"the cancel took {took:.2f} s (heartbeat {HEARTBEAT} s)"
    await poll(_async(lambda: not any(_alive(pid) for pid in pids)), timeout=10,
               what="every process of the command gone")  # fmt: skip
    await invariants.check(top.db)


@pytest.mark.timeout(180)
async def test_a_cancel_from_the_other_api_ends_a_whole_sub_agent_tree(
    deployed: Deployment,
) -> None:
    top = deployed.top

    def spawn(model: str, tools: list[str]) -> dict[str, Any]:
        arguments = {"task": "work", "model": model, "tools": tools}
        return {"tool_call": {"name": "spawn_agent", "arguments": arguments}}

    write_scripts(
        top.home,
        boss={"turns": [[spawn("scripted:middle", ["spawn_agent"])], [{"text": "done"}]]},
        middle={"turns": [[spawn("scripted:long", [])], [{"text": "done"}]]},
        long=streaming(120, every=0.05),
    )
    response = await deployed.clients[0].post(
        "/v1/runs", json={"message": "go", "model": "scripted:boss", "tools": ["spawn_agent"]}
    )
    assert response.status_code == 202, response.text
    root = response.json()["run_id"]

    async def tree() -> list[Any]:
        return await rows(
            top,
            "WITH RECURSIVE tree AS (SELECT run_id, status, owner FROM runs WHERE run_id = :root"
            " UNION ALL SELECT r.run_id, r.status, r.owner FROM runs r"
            " JOIN tree t ON r.parent_run_id = t.run_id) SELECT * FROM tree",
            root=root,
        )

    async def three_running() -> bool:
        found = await tree()
        return len(found) == 3 and all(row.status == "running" for row in found)

    await poll(three_running, timeout=60, what="the root, its child and grandchild running")
    assert len({row.owner for row in await tree()}) == 1, "a tree runs on its root's worker"

    run, took = await deployed.cancel(1, root)

    assert run["status"] == "cancelled", run
    assert took < PROMPT, f"the cancel took {took:.2f} s (heartbeat {HEARTBEAT} s)"
    assert {row.status for row in await tree()} == {"cancelled"}
    await invariants.check(top.db)


@pytest.mark.timeout(240)
async def test_with_redis_down_a_cancel_ends_the_run_within_the_heartbeat(
    postgres_url: str, tmp_path: Path
) -> None:
    heartbeat = 8.0
    home = tmp_path / "home"
    write_scripts(home, long=streaming(120, every=0.05))
    async with (
        private_redis(tmp_path) as redis_server,
        topology(postgres_url, home, **_env(redis_server.url, heartbeat=heartbeat)) as top,
    ):
        env = top.env
        deployment = await _deploy(top, concurrency=2)
        try:
            async with top.client() as client:
                run_ids = await start_runs(client, 4, "scripted:long")
            await _running_on_both(top, deployment, run_ids)

            redis_server.stop()  # whether or not a process noticed yet
            # One through each API at once (each waits out a heartbeat: one after the other
            # would double the test's time for nothing).
            cancels = [deployment.cancel(i, run_id) for i, run_id in enumerate(run_ids[:2])]
            for run, took in await asyncio.gather(*cancels):
                assert run["status"] == "cancelled", run
                # The owner's next heartbeat reads the flag; the waiter reads the store.
                assert took < heartbeat + 2.5, f"took {took:.2f} s (heartbeat {heartbeat} s)"

            await redis_server.start()
            await deployment.listening(redis_server.url, env["CULM_REDIS_PREFIX"])
            for i, run_id in enumerate(run_ids[2:]):
                run, took = await deployment.cancel(i % 2, run_id)
                assert run["status"] == "cancelled", run
                assert took < heartbeat / 2, f"took {took:.2f} s: not prompt again"
            await invariants.check(top.db)
        finally:
            await deployment.aclose()
        top.assert_clean_logs(tracebacks=False)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _async(check: Any) -> Any:
    async def checked() -> bool:
        return bool(check())

    return checked
