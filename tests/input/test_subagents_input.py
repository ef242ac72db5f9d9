"""Sub-agents that wait for a person, through the Engine on both backends: an answered child
comes back beside its parent even on a full worker, and a grandchild's wait is a wait too."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import culm
from culm.cli.input import asked
from culm.domain.events import SubAgentEvent
from culm.domain.models import ToolPhase
from tests.input.support import call, engine
from tests.support import collect


async def _asked(eng: culm.Engine, root_run_id: str) -> list[Any]:
    """The open requests below ``root_run_id`` once there is one."""
    async with asyncio.timeout(20):
        while True:
            pending = await eng.pending_input(root_run_id)
            if pending:
                return pending
            run = await eng.get_run(root_run_id)
            assert not run.status.is_terminal, run
            await asyncio.sleep(0.02)


async def _until_phase(eng: culm.Engine, run_id: str, phase: ToolPhase) -> None:
    async with asyncio.timeout(20):
        while (run := await eng.get_run(run_id)).last_tool_phase is not phase:
            await asyncio.sleep(0.02)
    assert run.last_tool_name == "spawn_agent"


def _leaf(eng: culm.Engine) -> None:
    write = call("write_file", path="leaf.txt", content="x")
    eng.scripts.register("leaf", {"turns": [[write], [{"text": "leaf done"}]]})


async def test_an_answered_child_resumes_beside_its_parent_on_a_full_worker(
    tmp_path: Path,
) -> None:
    # One room: the parent holds it while its child waits; the answered child cannot come
    # back through the queue, so the parent's process resumes it at once.
    async with engine(tmp_path, worker_concurrency=1) as eng:
        _leaf(eng)
        spawn = call("spawn_agent", task="write", model="scripted:leaf", tools=["write_file"])
        eng.scripts.register("parent", {"turns": [[spawn], [{"text": "parent done"}]]})
        run = await eng.run(
            "go",
            model="scripted:parent",
            tools=["spawn_agent", "write_file"],
            workspace=str(tmp_path),
            require_approval=["write_file"],
        )
        [request] = await _asked(eng, run.run_id)
        assert request.run_id != run.run_id  # the child's
        await _until_phase(eng, run.run_id, ToolPhase.WAITING)  # shows it waits on it
        await eng.respond(request.run_id, request.request_id, approve=True)
        done = await eng.wait(run.run_id, timeout=15)
        assert done.status is culm.RunStatus.COMPLETED
        assert (tmp_path / "leaf.txt").read_text() == "x"


async def test_a_grandchild_waiting_is_no_run_time_for_the_watchdog(tmp_path: Path) -> None:
    # The watchdog ends a child that runs longer than LIMIT s; the grandchild waits longer. The
    # children's own running (spawning, model turns) must fit in LIMIT on a loaded machine.
    limit = 2.5
    limits: dict[str, Any] = {"subagent_max_duration": limit, "subagent_heartbeat": 0.1}
    async with engine(tmp_path, **limits) as eng:
        _leaf(eng)
        tools = ["spawn_agent", "write_file"]
        deeper = call("spawn_agent", task="write", model="scripted:leaf", tools=["write_file"])
        eng.scripts.register("middle", {"turns": [[deeper], [{"text": "middle done"}]]})
        spawn = call("spawn_agent", task="delegate", model="scripted:middle", tools=tools)
        eng.scripts.register("root", {"turns": [[spawn], [{"text": "root done"}]]})
        began = time.monotonic()
        run = await eng.run(
            "go",
            model="scripted:root",
            tools=tools,
            workspace=str(tmp_path),
            require_approval=["write_file"],
        )
        [request] = await _asked(eng, run.run_id)
        leaf = await eng.get_run(request.run_id)
        assert leaf.parent_run_id is not None and leaf.parent_run_id != run.run_id
        await asyncio.sleep(limit + 0.5)  # longer than the children may run: waiting is not running
        await eng.respond(request.run_id, request.request_id, approve=True)
        done = await eng.wait(run.run_id, timeout=15)
        assert done.status is culm.RunStatus.COMPLETED
        events = await collect(eng.subscribe(run.run_id))
        [completed] = [e for e in events if e.type == "sub_agent_completed"]
        assert completed.status == "completed"
        [spawned] = [e for e in events if e.type == "tool_complete"]
        wall_ms = (time.monotonic() - began) * 1000
        assert spawned.elapsed_ms < wall_ms - (limit + 0.5) * 1000  # the wait slept is not


def test_the_cli_finds_a_grandchilds_request_inside_two_wrappers() -> None:
    requested = {"type": "input_requested", "request_id": "r1", "kind": "approval"}
    middle = {"type": "sub_agent_event", "child_run_id": "leaf", "event": requested}
    outer = SubAgentEvent(child_session_id="s", child_run_id="middle", event=middle)
    assert asked(outer) == ("leaf", requested)  # answered on the grandchild's run id
