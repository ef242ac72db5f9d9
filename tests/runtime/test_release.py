"""A stop with shutdown policy "recover": each run is handed back as soon as it has stopped."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

import pytest

import culm
from culm.runtime.roles import Role
from culm.tools.base import Tool, ToolContext
from tests.support import settings, tool_turn

pytestmark = pytest.mark.timeout(60)


class StubbornTool(Tool):
    """Sleeps; once cancelled, takes until ``gate`` is set to stop (a slow clean-up)."""

    name: ClassVar[str] = "stubborn"
    description: ClassVar[str] = "Stop slowly."
    parameters: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.gate = asyncio.Event()

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await self.gate.wait()
            raise
        return "never"


async def test_a_run_is_handed_back_as_soon_as_it_stops_not_after_every_other_run(
    tmp_path: Path,
) -> None:
    # Handed back only once every run is done, a run is no longer renewed meanwhile: its lease
    # could run out and a sweeper end it "interrupted". So "quick" must be ready again while
    # "slow" is still stopping.
    tool = StubbornTool()
    config = settings(tmp_path, shutdown_policy="recover", max_attempts=3, scheduler=False)
    engine = culm.Engine(config, tools=[tool])
    await engine.start()
    engine.scripts.register("stuck", {"turns": [[{"text": "working"}, {"delay": 3600}]]})
    engine.scripts.register("slow", {"turns": [tool_turn("stubborn")]})
    slow = await engine.run("go", model="scripted:slow", tools=["stubborn"])
    quick = await engine.run("go", model="scripted:stuck")
    async with asyncio.timeout(10):
        await tool.started.wait()
        while (await engine.get_run(quick.run_id)).status is not culm.RunStatus.RUNNING:
            await asyncio.sleep(0.01)
    closing = asyncio.create_task(engine.aclose())
    try:
        async with asyncio.timeout(10):  # without handing back at once: not before "slow" ends
            while (await engine.store.get_run(quick.run_id)).attempt != 2:  # type: ignore[union-attr]
                await asyncio.sleep(0.01)
        handed_back = await engine.store.get_run(quick.run_id)
        assert handed_back is not None and handed_back.status is culm.RunStatus.PENDING
        assert not closing.done()
        assert engine.registry.get(slow.run_id) is not None  # still stopping
    finally:
        tool.gate.set()
        await closing
    store = culm.Engine(settings(tmp_path, scheduler=False), role=Role.API)
    async with store:
        for run_id in (quick.run_id, slow.run_id):
            run = await store.get_run(run_id)
            assert run.status is culm.RunStatus.PENDING and run.attempt == 2


async def test_a_clean_hand_back_goes_on_from_the_last_stored_seq(tmp_path: Path) -> None:
    # Everything the run showed is stored before it is handed back, so the hand-back says so
    # ("clean"): its run_recovered event follows the last stored one, with no gap left for
    # seqs reserved for events that might have been shown unstored.
    config = settings(tmp_path, shutdown_policy="recover", max_attempts=3, scheduler=False)
    engine = culm.Engine(config)
    await engine.start()
    try:
        engine.scripts.register("stuck", {"turns": [[{"text": "working"}, {"delay": 3600}]]})
        run = await engine.run("go", model="scripted:stuck")
        async with asyncio.timeout(10):
            while not await engine.store.read_events(run.run_id):
                await asyncio.sleep(0.01)
    finally:
        await engine.aclose()
    store = culm.Engine(settings(tmp_path, scheduler=False), role=Role.API)
    async with store:
        events = await store.store.read_events(run.run_id)
        handed_back = await store.get_run(run.run_id)
    assert handed_back.status is culm.RunStatus.PENDING and handed_back.attempt == 2
    assert events[-1].type == "run_recovered"
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
