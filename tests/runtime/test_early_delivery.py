"""Events are shown before they are stored only while the run's lease surely holds: once the
store fails (its worker then stops renewing leases, on purpose), a run's new events reach
clients only as the store takes them (review finding 2)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import culm
from culm.domain.events import RunEvent, Token
from culm.errors import StorageUnavailableError
from culm.storage.base import Ending, Fence
from culm.storage.sql import SqlStore
from tests.contract.gate import GateTool
from tests.support import settings, tool_turn


class SwitchableStore(SqlStore):
    """The real store; run event writes fail (as a store failure) while ``down``."""

    down = False

    async def append_events(
        self,
        events: Sequence[RunEvent],
        *,
        fences: Mapping[str, Fence] | None = None,
        reserve: int = 0,
        endings: Mapping[str, Ending] | None = None,
    ) -> set[str]:
        if self.down:
            raise StorageUnavailableError("the store is unavailable: disk I/O error")
        return await super().append_events(events, fences=fences, reserve=reserve, endings=endings)


async def stored_seqs(engine: culm.Engine, run_id: str) -> set[int]:
    return {event.seq for event in await engine.store.read_events(run_id)}


async def test_a_failing_store_stops_early_delivery(tmp_path: Path, database_url: str) -> None:
    store = SwitchableStore(database_url)
    gate = GateTool()
    config = settings(tmp_path / "home", database_url=database_url, scheduler=False)
    seen: list[RunEvent] = []
    async with culm.Engine(config, store=store, tools=[gate]) as engine:
        engine.scripts.register("gated", {"turns": [tool_turn("gate"), [{"text": "done"}]]})
        run = await engine.run("go", model="scripted:gated", tools=["gate"])
        await gate.entered.wait()
        runner = engine.registry.get(run.run_id)
        assert runner is not None

        async def read() -> None:
            async for event in engine.subscribe(run.run_id):
                seen.append(event)

        reader = asyncio.create_task(read())
        store.down = True
        runner.emit(Token(content="before"))  # may be shown: the failure is not known yet
        async with asyncio.timeout(10):
            while not engine.batcher.failing:
                await asyncio.sleep(0.01)
        unstored = [runner.emit(Token(content=f"t{i}")) for i in range(3)]
        await asyncio.sleep(0.3)
        assert not {e.seq for e in unstored} & {e.seq for e in seen}
        store.down = False
        async with asyncio.timeout(10):
            while not {e.seq for e in unstored} <= {e.seq for e in seen}:
                await asyncio.sleep(0.01)
        # Once the store works again, early delivery resumes: an event may reach a subscriber
        # before the batch holding it commits (the durability window), so wait for the store.
        async with asyncio.timeout(10):
            while not {e.seq for e in unstored} <= await stored_seqs(engine, run.run_id):
                await asyncio.sleep(0.01)
        gate.release.set()
        await engine.wait(run.run_id)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await reader
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
