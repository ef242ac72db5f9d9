"""Helpers of the people-in-the-loop tests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import culm
from culm.domain.events import RunEvent
from tests.support import settings


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"tool_call": {"name": name, "arguments": arguments}}


def engine(tmp_path: Path, **overrides: Any) -> culm.Engine:
    overrides.setdefault("heartbeat_seconds", 0.1)
    return culm.Engine(settings(tmp_path, **overrides))


async def until_waiting(engine: culm.Engine, run_id: str, count: int = 1) -> list[Any]:
    """The run's open requests once it waits with ``count`` of them."""
    async with asyncio.timeout(20):
        while True:
            run = await engine.get_run(run_id)
            if run.status is culm.RunStatus.WAITING:
                pending = await engine.pending_input(run_id)
                if len(pending) >= count:
                    return pending
            assert not run.status.is_terminal, run
            await asyncio.sleep(0.02)


def of_type(events: list[RunEvent], kind: str) -> list[Any]:
    return [event for event in events if event.type == kind]
