"""Helpers for tests that drive a real Engine (real SQLite under a tmp CULM_HOME)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import culm
from culm.domain.events import RunEvent
from culm.runtime.runner import Runner
from culm.tools.base import Tool, ToolContext

# What "promptly" means in a test: far under the 30-60 s the code under test would otherwise
# wait (a sleep, a stalled stream), far over any scheduling noise on a loaded 2-core machine.
# The latency targets themselves (cancel within a second) are measured by bench/, not asserted.
PROMPTLY = 10.0


def settings(home: Path, **overrides: Any) -> culm.Settings:
    return culm.Settings(home=home, **overrides)


async def collect(events: AsyncIterator[RunEvent], *, timeout: float = 20) -> list[RunEvent]:
    async with asyncio.timeout(timeout):
        return [event async for event in events]


def accounted(events: list[RunEvent]) -> list[int]:
    """The seqs ``events`` stand for: each event's own, a ``gap``'s whole range instead. After a
    crash a run's stream has a gap where seqs were reserved for events shown before they were
    stored (see docs/ARCHITECTURE.md): every seq is still accounted for exactly once."""
    seqs: list[int] = []
    for event in events:
        if event.type == "gap":
            seqs += range(event.from_seq, event.to_seq + 1)  # type: ignore[union-attr]
        else:
            seqs.append(event.seq)
    return seqs


def types(events: list[RunEvent]) -> list[str]:
    return [event.type for event in events]


def tool_turn(name: str, arguments: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [{"tool_call": {"name": name, "arguments": arguments or {}}}]


class SleepTool(Tool):
    """Sleeps ``seconds`` (default 30): something to cancel or time out."""

    name: ClassVar[str] = "sleep"
    description: ClassVar[str] = "Sleep."
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"seconds": {"type": "number"}},
    }
    read_only: ClassVar[bool] = False

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        self.started.set()
        await asyncio.sleep(float(arguments.get("seconds", 30)))
        return "slept"


class FailingTool(Tool):
    name: ClassVar[str] = "explode"
    description: ClassVar[str] = "Always fails."
    parameters: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        raise RuntimeError("kaboom")


class RendezvousTool(Tool):
    """Read-only; returns only once ``parties`` calls are inside it at the same time, so a
    round of such calls finishes only if they really run concurrently."""

    name: ClassVar[str] = "rendezvous"
    description: ClassVar[str] = "Meet."
    parameters: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}
    read_only: ClassVar[bool] = True

    def __init__(self, parties: int) -> None:
        self.barrier = asyncio.Barrier(parties)

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        async with asyncio.timeout(5):
            await self.barrier.wait()
        return "met"


class RecordingTool(Tool):
    """Not read-only; records the order of entries and exits."""

    name: ClassVar[str] = "record"
    description: ClassVar[str] = "Record."
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"label": {"type": "string"}},
    }

    def __init__(self) -> None:
        self.log: list[str] = []

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        label = str(arguments.get("label"))
        self.log.append(f"enter {label}")
        await asyncio.sleep(0.01)
        self.log.append(f"exit {label}")
        return label


async def launched(engine: culm.Engine, run_id: str, *, timeout: float = 10) -> Runner:
    """The run's runner in ``engine``, once the engine's worker has claimed and launched it
    (a run is reserved ready and claimed by the dispatcher, not started by ``start_run``)."""
    async with asyncio.timeout(timeout):
        while (runner := engine.registry.get(run_id)) is None:
            await asyncio.sleep(0.005)
    return runner


def task_kinds() -> Counter[str]:
    """The running tasks, counted by coroutine. Compare these, not task ids or a count: the
    engine's idle tasks (its dispatcher waiting for a wake-up) are re-created as they wake."""
    return Counter(task.get_coro().__qualname__ for task in asyncio.all_tasks())  # type: ignore[union-attr]


async def settled_engine_tasks(engine: culm.Engine) -> Counter[str]:
    """The engine's own tasks once its dispatcher has claimed a run (it opens its wake-up
    listener, on PostgreSQL a task, lazily): the baseline for "no task left behind"."""
    run = await engine.run("warm-up", model="scripted:echo")
    await engine.wait(run.run_id)
    return task_kinds()
