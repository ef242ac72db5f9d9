"""The claim/dispatch path, leases and fencing: two engines on one PostgreSQL database.

Each engine stands for a process (its own store connections, worker id and heartbeat); the
cross-process faults themselves (kill -9, SIGSTOP, PID namespaces) are in the distributed tests.
A takeover is forced with ``sweep(dead_owners=[…])``, as a sweeper does for an owner it knows
is gone, so no test waits for a lease to run out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import culm
from culm.runtime.roles import Role
from culm.storage.base import SweepPolicy
from culm.storage.sql import SqlStore
from tests.support import settings

# PostgreSQL only: several engines (API, workers) on one database, as distributed mode deploys.
pytestmark = [pytest.mark.timeout(60), pytest.mark.backends("postgres")]

STUCK = {"turns": [[{"text": "working"}, {"delay": 3600}]]}
QUICK = {"turns": [[{"text": "done"}]]}
ERROR_POLICY = SweepPolicy(requeue=False, max_attempts=3, lease_seconds=10.0)


def _engine(home: Path, url: str, role: Role, **overrides: Any) -> culm.Engine:
    config = settings(
        home, database_url=url, heartbeat_seconds=0.1, claim_poll_seconds=0.2, **overrides
    )
    engine = culm.Engine(config, role=role)
    return engine


@pytest.fixture
async def other_store(postgres_head_url: str) -> AsyncIterator[SqlStore]:
    """A second store on the same database: another process's view of it."""
    store = SqlStore(postgres_head_url)
    await store.start()
    try:
        yield store
    finally:
        await store.aclose()


async def _until(predicate: Any, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.02)


async def _take_over(store: SqlStore, engine: culm.Engine, *run_ids: str) -> list[culm.Run]:
    """Sweep ``engine``'s runs as a sweeper does for a dead owner, until every one of
    ``run_ids`` is taken. A row locked at that moment (its owner renewing the lease, writing
    events) is skipped, as SKIP LOCKED does: try again. Returns every run taken over."""
    taken: list[culm.Run] = []
    async with asyncio.timeout(10):
        while not set(run_ids) <= {run.run_id for run in taken}:
            taken += await store.sweep("sweeper", ERROR_POLICY, dead_owners=[engine.worker_id])
            await asyncio.sleep(0.01)
    return taken


async def _running_here(engine: culm.Engine, run_id: str) -> None:
    async def started() -> bool:
        run = await engine.store.get_run(run_id)
        return run is not None and run.status is culm.RunStatus.RUNNING

    await _until(started)


async def test_a_run_reserved_by_an_api_process_is_claimed_run_and_finished_by_a_worker(
    tmp_path: Path, postgres_head_url: str
) -> None:
    api = _engine(tmp_path / "api", postgres_head_url, Role.API)
    worker = _engine(tmp_path / "worker", postgres_head_url, Role.WORKER)
    async with api, worker:
        worker.scripts.register("quick", QUICK)
        session = await api.create_session(model="scripted:echo")
        api.scripts.register("quick", QUICK)
        run = await api.start_run(session.session_id, "hello", model="scripted:quick")
        assert run.status is culm.RunStatus.PENDING
        done = await api.wait(run.run_id, timeout=20)
        assert done.status is culm.RunStatus.COMPLETED
        assert api.registry.get(run.run_id) is None  # never executed by the API process
        assert worker.counters.claims == 1
        events = [e.type for e in await worker.store.read_events(run.run_id)]
        assert events[0] == "execution_started" and events[-1] == "complete"
        assert "run_recovered" not in events
        texts = [m.content for m in await api.get_messages(session.session_id)]
        assert texts == ["hello", "done"]


async def test_a_run_whose_lease_is_lost_mid_run_is_cancelled_here_and_writes_nothing(
    tmp_path: Path, postgres_head_url: str, other_store: SqlStore
) -> None:
    worker = _engine(tmp_path, postgres_head_url, Role.WORKER)
    async with worker:
        worker.scripts.register("stuck", STUCK)
        run = await worker.run("go", model="scripted:stuck")
        await _running_here(worker, run.run_id)
        runner = worker.registry.get(run.run_id)
        assert runner is not None
        [taken] = await _take_over(other_store, worker, run.run_id)
        assert taken.status is culm.RunStatus.ERROR
        stored = await other_store.read_events(run.run_id)
        async with asyncio.timeout(10):  # within a heartbeat (0.1 s here)
            await runner.done.wait()
        assert runner.status is culm.RunStatus.RUNNING  # never given a status here
        # Nothing after the takeover: no `cancelled` event, the status the sweeper set.
        assert await other_store.read_events(run.run_id) == stored
        assert [e.type for e in stored][-2:] == ["run_recovered", "error"]
        after = await other_store.get_run(run.run_id)
        assert after is not None and after.status is culm.RunStatus.ERROR
        assert after.error == "interrupted"


async def test_a_cancel_flag_set_by_another_store_reaches_the_run_within_a_heartbeat(
    tmp_path: Path, postgres_head_url: str, other_store: SqlStore
) -> None:
    worker = _engine(tmp_path, postgres_head_url, Role.WORKER)
    async with worker:
        worker.scripts.register("stuck", STUCK)
        run = await worker.run("go", model="scripted:stuck")
        await _running_here(worker, run.run_id)
        flagged = await other_store.request_cancel(run.run_id, "from elsewhere")
        assert flagged is not None and flagged.status is culm.RunStatus.RUNNING
        done = await worker.wait(run.run_id, timeout=10)
        assert done.status is culm.RunStatus.CANCELLED
        assert (await other_store.read_events(run.run_id))[-1].type == "cancelled"


async def test_shutdown_with_policy_recover_hands_runs_to_another_engine(
    tmp_path: Path, postgres_head_url: str
) -> None:
    first = _engine(
        tmp_path / "a", postgres_head_url, Role.WORKER, shutdown_policy="recover", max_attempts=3
    )
    async with first:
        first.scripts.register("job", STUCK)
        run = await first.run("go", model="scripted:job")
        await _running_here(first, run.run_id)
    handed_back = await _fresh_store_get(postgres_head_url, run.run_id)
    assert handed_back.status is culm.RunStatus.PENDING
    assert handed_back.attempt == 2
    second = _engine(tmp_path / "b", postgres_head_url, Role.WORKER)
    async with second:
        second.scripts.register("job", QUICK)
        done = await second.wait(run.run_id, timeout=20)
        assert done.status is culm.RunStatus.COMPLETED
        assert second.counters.claims == 1
        events = [e.type for e in await second.store.read_events(run.run_id)]
        assert events.count("execution_started") == 2
        assert "run_recovered" in events and events[-1] == "complete"
        seqs = [e.seq for e in await second.store.read_events(run.run_id)]
        assert seqs == list(range(1, len(seqs) + 1))


async def test_a_parent_taken_over_ends_its_children_parent_recovered(
    tmp_path: Path, postgres_head_url: str, other_store: SqlStore
) -> None:
    worker = _engine(tmp_path, postgres_head_url, Role.WORKER)
    async with worker:
        worker.scripts.register("child", STUCK)
        spawn = {"name": "spawn_agent", "arguments": {"task": "t", "model": "scripted:child"}}
        worker.scripts.register("parent", {"turns": [[{"tool_call": spawn}], [{"text": "x"}]]})
        run = await worker.run("go", model="scripted:parent", tools=["spawn_agent"])

        async def child_running() -> bool:
            children = await other_store.list_runs(parent_run_id=run.run_id)
            return bool(children) and children[0].status is culm.RunStatus.RUNNING

        await _until(child_running)
        [child] = await other_store.list_runs(parent_run_id=run.run_id)
        assert worker.registry.get(child.run_id) is not None  # executed by its parent's worker
        # The child's row may be locked (its lease renewed) when the parent's is taken: a
        # later sweep takes it.
        taken = await _take_over(other_store, worker, run.run_id, child.run_id)
        assert sorted(r.run_id for r in taken) == sorted([run.run_id, child.run_id])
        ended = await other_store.get_run(child.run_id)
        assert ended is not None and ended.status is culm.RunStatus.CANCELLED
        last = (await other_store.read_events(child.run_id))[-1]
        assert last.type == "cancelled" and last.reason == "parent recovered"
        async with asyncio.timeout(10):  # both cancelled here within a heartbeat
            while len(worker.registry):
                await asyncio.sleep(0.02)
        # Nothing written after the takeover, by the parent or by the child.
        assert (await other_store.read_events(child.run_id))[-1] == last
        parent = await other_store.get_run(run.run_id)
        assert parent is not None and parent.status is culm.RunStatus.ERROR


async def _fresh_store_get(url: str, run_id: str) -> culm.Run:
    store = SqlStore(url)
    await store.start()
    try:
        run = await store.get_run(run_id)
        assert run is not None
        return run
    finally:
        await store.aclose()
