"""Cancel and wait across processes through the Redis bus: an API engine and a worker engine on
one PostgreSQL database and one Redis (each engine stands for a process).

The worker's heartbeat and the waiter's safety poll are made an hour long, so the only way
these tests can end is the bus: the cancel notice on the owner's channel, and the run's terminal
event on its stream. (The processes, faults and timings are in tests/distributed.)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import culm
from culm.runtime import manager, waiter
from culm.runtime.roles import Role
from tests.support import settings

pytestmark = [pytest.mark.timeout(60), pytest.mark.backends("postgres")]

STUCK = {"turns": [[{"text": "working"}, {"delay": 3600}]]}
SLOW = {"turns": [[{"text": "working"}, {"delay": 0.5}, {"text": "done"}]]}
HOUR = 3600.0


@pytest.fixture
async def deployment(
    tmp_path: Path, postgres_head_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[culm.Engine, culm.Engine]]:
    monkeypatch.setattr(waiter, "_SAFETY_POLL", HOUR)
    prefix = f"culm-test:{uuid.uuid4().hex[:12]}:"

    def engine(name: str, role: Role) -> culm.Engine:
        config = settings(
            tmp_path / name, database_url=postgres_head_url, redis_url=redis_url, redis_prefix=prefix,
            heartbeat_seconds=HOUR, lease_seconds=2 * HOUR, claim_poll_seconds=0.2,
        )  # fmt: skip
        return culm.Engine(config, role=role)

    api, worker = engine("api", Role.API), engine("worker", Role.WORKER)
    async with api, worker:
        for scripts in (api.scripts, worker.scripts):
            scripts.register("stuck", STUCK)
            scripts.register("slow", SLOW)
        await _listening(worker)
        yield api, worker


async def _listening(worker: culm.Engine) -> None:
    control = worker.bus.control  # type: ignore[attr-defined]
    await asyncio.wait_for(control.listening.wait(), 10)


async def _running(engine: culm.Engine, run_id: str) -> None:
    while (await engine.store.get_run(run_id)).status is not culm.RunStatus.RUNNING:  # type: ignore[union-attr]
        await asyncio.sleep(0.02)


async def test_a_cancel_on_the_api_reaches_the_worker_and_its_wait_ends_by_the_bus(
    deployment: tuple[culm.Engine, culm.Engine],
) -> None:
    api, worker = deployment
    run = await api.run("go", model="scripted:stuck")
    await _running(api, run.run_id)
    assert worker.registry.get(run.run_id) is not None

    cancelled = await api.cancel(run.run_id, reason="stop it", wait=True)

    assert cancelled.status is culm.RunStatus.CANCELLED
    events = await api.store.read_events(run.run_id)
    assert events[-1].type == "cancelled" and events[-1].reason == "stop it"


async def test_a_wait_on_the_api_ends_with_the_run_s_terminal_event_on_the_bus(
    deployment: tuple[culm.Engine, culm.Engine],
) -> None:
    api, _worker = deployment
    run = await api.run("go", model="scripted:slow")
    await _running(api, run.run_id)
    ended = await api.wait(run.run_id)
    assert ended.status is culm.RunStatus.COMPLETED
    # And once it has ended, a wait answers from the store at once.
    assert (await api.wait(run.run_id)).status is culm.RunStatus.COMPLETED


async def test_a_run_nobody_claimed_ends_at_once_in_the_store(
    deployment: tuple[culm.Engine, culm.Engine],
) -> None:
    api, worker = deployment
    await worker.drain()  # no worker claims any more
    run = await api.run("go", model="scripted:stuck")
    cancelled = await api.cancel(run.run_id, wait=True)
    assert cancelled.status is culm.RunStatus.CANCELLED
    assert (await api.store.get_run(run.run_id)).owner is None  # type: ignore[union-attr]


@pytest.fixture
def heard(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Set once a run manager has handled a cancel request (patched before the engines start:
    the heartbeat and the bus take the handler when they start)."""
    event = asyncio.Event()
    original = manager.RunManager._cancel_requested

    def spy(self: manager.RunManager, reasons: Mapping[str, str]) -> None:
        original(self, reasons)
        if reasons:
            event.set()

    monkeypatch.setattr(manager.RunManager, "_cancel_requested", spy)
    return event


async def test_a_cancel_arriving_while_the_worker_s_claim_returns_cancels_the_run(
    heard: asyncio.Event,
    deployment: tuple[culm.Engine, culm.Engine],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The claim commits (the run is running, owned by the worker) before ``claim_runs``
    returns: a cancel notice in between is for a run the worker does not execute yet. It must
    still cancel it at once, not a heartbeat (here an hour) later."""
    api, worker = deployment
    dispatcher = worker.runs.dispatcher
    assert dispatcher is not None
    store = dispatcher._store
    claim_runs = store.claim_runs
    entered, claimed, returning = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def held_claim(*args: Any, **kwargs: Any) -> list[culm.Run]:
        entered.set()
        runs = await claim_runs(*args, **kwargs)
        if runs:
            claimed.set()
            await returning.wait()
        return runs

    monkeypatch.setattr(store, "claim_runs", held_claim)
    # A poll's claim begun before the patch would take the run past it: claims take turns
    # (the dispatcher's lock), so once one has entered the patched claim, none is left.
    await asyncio.wait_for(entered.wait(), 10)
    run = await api.run("go", model="scripted:slow")
    await asyncio.wait_for(claimed.wait(), 10)
    cancelled = asyncio.ensure_future(api.cancel(run.run_id, reason="stop it", wait=True))
    await asyncio.wait_for(heard.wait(), 10)
    returning.set()

    ended = await asyncio.wait_for(cancelled, 30)
    assert ended.status is culm.RunStatus.CANCELLED
    events = await api.store.read_events(run.run_id)
    assert [event.type for event in events if event.type == "round_completed"] == []
    assert events[-1].type == "cancelled" and events[-1].reason == "stop it"
