"""Cancelling a parent while its ``spawn_agent`` calls are reserving children ends every child.

It used to leave a few of them ``pending`` for good (reserved by the store, never launched) and
the parent's ``cancel(wait=True)`` returned before the tree was terminal.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import culm
from tests.support import settings

CHILDREN = 30


def _spawn(i: int) -> dict[str, object]:
    return {"tool_call": {"name": "spawn_agent", "arguments": {"task": f"t{i}", "title": str(i)}}}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("after_started", [0, 1, 5, 15])
async def test_cancelling_a_parent_mid_spawn_ends_every_child(
    tmp_path: Path, after_started: int
) -> None:
    overrides = {"subagents_per_run": CHILDREN, "subagents_total": CHILDREN, "scheduler": False}
    async with culm.Engine(settings(tmp_path, **overrides)) as engine:
        engine.scripts.register(
            "fan", {"turns": [[_spawn(i) for i in range(CHILDREN)], [{"text": "never"}]]}
        )
        run = await engine.run("go", model="scripted:fan", tools=["spawn_agent"])
        started = 0
        async for event in engine.subscribe(run.run_id):
            if event.type == "tool_start":
                started += 1
            if started >= CHILDREN and (after_started == 0 or event.type == "sub_agent_started"):
                after_started -= 1
                if after_started <= 0:
                    break
        done = await engine.cancel(run.run_id, wait=True, timeout=30)
        assert done.status is culm.RunStatus.CANCELLED
        # At once, with no waiting: the whole tree is terminal.
        children = await engine.get_children(run.run_id)
        assert [c for c in children if not c.status.is_terminal] == []
        assert await engine.list_runs(status="pending") == []
        assert await engine.list_runs(status="running") == []
        assert len(engine.registry) == 0
        for child in children:
            assert await engine.store.get_active_run(child.session_id) is None
