"""Sub-agent limits and usage over a run tree.

The contract's defaults (README, settings table): at most 4 sub-agents at a time per run and 16
in the whole engine (the rest wait in order), nested at most 2 deep; ``usage_with_descendants``
is the run's usage plus that of every sub-agent below it, at every level. Each cap is probed at
N−1, N and N+1 on the engine's own capacity object, and the usage sum on a real three-level tree.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

import culm
from culm.runtime.subagents import SubAgents
from tests.support import settings

PER_RUN = 4  # sub-agents at a time per run
TOTAL = 16  # sub-agents at a time in the engine


class _Holders:
    """Tasks that each take a spawn slot of a run and hold it until released."""

    def __init__(self, capacity: SubAgents) -> None:
        self.capacity = capacity
        self.inside = 0
        self.release = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def spawn(self, run_id: str, count: int) -> None:
        for _ in range(count):
            self.tasks.append(asyncio.create_task(self._hold(run_id)))

    async def _hold(self, run_id: str) -> None:
        async with self.capacity.slot(run_id):
            self.inside += 1
            await self.release.wait()
            self.inside -= 1

    async def settle(self) -> None:
        """Let every task that can take a slot take it (no I/O: a few loop turns suffice)."""
        for _ in range(len(self.tasks) + 5):
            await asyncio.sleep(0)

    async def finish(self) -> None:
        self.release.set()
        async with asyncio.timeout(5):
            await asyncio.gather(*self.tasks)


@contextlib.asynccontextmanager
async def _engine_capacity(tmp_path: Path) -> Any:
    async with culm.Engine(settings(tmp_path)) as engine:
        yield _Holders(engine.subagents)


@pytest.mark.parametrize("wanted", [PER_RUN - 1, PER_RUN, PER_RUN + 1])
async def test_one_run_holds_at_most_4_sub_agents_at_a_time(tmp_path: Path, wanted: int) -> None:
    async with _engine_capacity(tmp_path) as holders:
        holders.spawn("run", wanted)
        await holders.settle()
        assert holders.inside == min(wanted, PER_RUN)
        await holders.finish()
        assert holders.inside == 0


@pytest.mark.parametrize("wanted", [TOTAL - 1, TOTAL, TOTAL + 1])
async def test_the_engine_holds_at_most_16_sub_agents_at_a_time(
    tmp_path: Path, wanted: int
) -> None:
    async with _engine_capacity(tmp_path) as holders:
        runs = [f"run-{i}" for i in range(wanted)]
        for run_id in runs:  # one per run: only the engine-wide cap can stop them
            holders.spawn(run_id, 1)
        await holders.settle()
        assert holders.inside == min(wanted, TOTAL)
        await holders.finish()


async def test_a_waiting_sub_agent_gets_the_first_slot_that_frees(tmp_path: Path) -> None:
    async with _engine_capacity(tmp_path) as holders:
        holders.spawn("busy", PER_RUN)
        for i in range(TOTAL - PER_RUN):
            holders.spawn(f"other-{i}", 1)
        holders.spawn("late", 1)  # the 17th
        await holders.settle()
        assert holders.inside == TOTAL
        holders.release.set()
        await holders.finish()  # the late one got a slot once the others left


def _spawn(task: str, model: str) -> dict[str, Any]:
    return {"tool_call": {"name": "spawn_agent", "arguments": {"task": task, "model": model}}}


async def test_usage_with_descendants_sums_every_level_of_the_tree(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path)) as engine:
        engine.scripts.register("leaf", {"turns": [[{"echo": True}]]})
        engine.scripts.register(
            "middle", {"turns": [[_spawn("leaf", "scripted:leaf")], [{"text": "middle done"}]]}
        )
        engine.scripts.register(
            "top", {"turns": [[_spawn("middle", "scripted:middle")], [{"text": "top done"}]]}
        )
        top = await engine.run("go", model="scripted:top", tools=["spawn_agent"])
        await engine.wait(top.run_id, timeout=20)
        tree = [await engine.get_run(top.run_id)]
        (middle,) = await engine.get_children(top.run_id)
        (leaf,) = await engine.get_children(middle.run_id)
        tree += [middle, leaf]
        assert [run.status for run in tree] == [culm.RunStatus.COMPLETED] * 3
        assert all(run.usage.total_tokens > 0 for run in tree)
        expected = tree[0].usage + tree[1].usage + tree[2].usage
        assert await engine.usage_with_descendants(top.run_id) == expected
        assert await engine.usage_with_descendants(middle.run_id) == middle.usage + leaf.usage
        assert await engine.usage_with_descendants(leaf.run_id) == leaf.usage


def test_the_defaults_are_the_documented_ones() -> None:
    defaults = culm.Settings()
    assert (defaults.subagents_per_run, defaults.subagents_total) == (4, 16)
    assert defaults.subagent_max_depth == 2
