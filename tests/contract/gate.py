"""A tool that holds its run inside a tool call until the test lets it go."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, ClassVar, NamedTuple

import culm
from culm.runtime.runner import Runner
from culm.tools.base import Tool, ToolContext
from tests.support import tool_turn


class GateTool(Tool):
    """Waits for :attr:`release`; :attr:`entered` is set once a call is inside, and
    :attr:`inside` counts the calls inside right now (:attr:`most` the highest it reached)."""

    name: ClassVar[str] = "gate"
    description: ClassVar[str] = "Wait at the gate."
    parameters: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}
    read_only: ClassVar[bool] = True

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.inside = 0
        self.most = 0

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        self.inside += 1
        self.most = max(self.most, self.inside)
        self.entered.set()
        try:
            await self.release.wait()
        finally:
            self.inside -= 1
        return "passed"


class Held(NamedTuple):
    engine: culm.Engine
    run: culm.Run
    runner: Runner
    gate: GateTool


@contextlib.asynccontextmanager
async def held_run(settings: culm.Settings) -> AsyncIterator[Held]:
    """An engine whose one run waits inside the gate tool, its runner live; on the way out the
    gate opens and the run ends before the engine closes."""
    gate = GateTool()
    async with culm.Engine(settings, tools=[gate]) as engine:
        engine.scripts.register("gated", {"turns": [tool_turn("gate"), [{"text": "done"}]]})
        run = await engine.run("go", model="scripted:gated", tools=["gate"])
        await gate.entered.wait()
        runner = engine.registry.get(run.run_id)
        assert runner is not None
        yield Held(engine, run, runner, gate)
        gate.release.set()
        await engine.wait(run.run_id)
