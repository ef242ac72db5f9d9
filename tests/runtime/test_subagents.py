"""Sub-agents through the Engine: parallel children, nested events, cancel cascade, watchdog."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

import culm
from culm.domain.events import RunEvent
from culm.runtime.subagents import CHILD_PROMPT
from tests.support import PROMPTLY, collect, settings, settled_engine_tasks, task_kinds


def _spawn(task: str, model: str, **extra: Any) -> dict[str, Any]:
    return {
        "tool_call": {"name": "spawn_agent", "arguments": {"task": task, "model": model, **extra}}
    }


def _ticks(count: int, delay: float = 0.01) -> list[dict[str, Any]]:
    return [step for i in range(count) for step in ({"delay": delay}, {"text": f"{i} "})]


async def _engine(tmp_path: Path, **overrides: Any) -> culm.Engine:
    return culm.Engine(settings(tmp_path, **overrides))


def _child_events(events: list[RunEvent], child_run_id: str) -> list[dict[str, Any]]:
    return [
        e.event for e in events if e.type == "sub_agent_event" and e.child_run_id == child_run_id
    ]  # type: ignore[union-attr]


async def test_parallel_children_keep_their_own_order(tmp_path: Path) -> None:
    engine = await _engine(tmp_path)
    async with engine:
        for name in ("a", "b", "c"):
            engine.scripts.register(f"child_{name}", {"turns": [_ticks(15) + [{"text": name}]]})
        round_1 = [_spawn(f"task {n}", f"scripted:child_{n}", title=n) for n in "abc"]
        engine.scripts.register("parent", {"turns": [round_1, [{"text": "all done"}]]})
        run = await engine.run("go", model="scripted:parent", tools=["spawn_agent"])
        events = await collect(engine.subscribe(run.run_id))
        children = await engine.get_children(run.run_id)
        assert len(children) == 3
        for child in children:
            assert child.trigger is culm.RunTrigger.SPAWN
            assert child.parent_run_id == run.run_id
            session = await engine.get_session(child.session_id)
            assert session.kind is culm.SessionKind.CHILD
            assert session.parent_session_id == run.session_id
            forwarded = _child_events(events, child.run_id)
            own = [e.model_dump(mode="json") for e in await collect(engine.subscribe(child.run_id))]
            assert forwarded == own  # every child event, in the child's order
        # The children ran at the same time: their forwarded events interleave.
        order = [e.child_run_id for e in events if e.type == "sub_agent_event"]  # type: ignore[union-attr]
        switches = sum(1 for a, b in zip(order, order[1:], strict=False) if a != b)
        assert switches > 3
        results = sorted(e.result for e in events if e.type == "tool_complete")  # type: ignore[union-attr]
        assert [r.split()[-1] for r in results] == ["a", "b", "c"]
        completed = [e for e in events if e.type == "sub_agent_completed"]
        assert [e.status for e in completed] == ["completed"] * 3  # type: ignore[union-attr]
        assert events[-1].type == "complete"
        total = await engine.usage_with_descendants(run.run_id)
        own_usage = (await engine.get_run(run.run_id)).usage
        child_usage = sum((c.usage.total_tokens for c in await engine.get_children(run.run_id)), 0)
        assert total.total_tokens == own_usage.total_tokens + child_usage > own_usage.total_tokens


@pytest.mark.timeout(30)
async def test_cancelling_the_parent_ends_the_whole_tree_promptly(tmp_path: Path) -> None:
    engine = await _engine(tmp_path)
    async with engine:
        baseline = await settled_engine_tasks(engine)
        engine.scripts.register("grandchild", {"turns": [[{"text": "deep"}, {"delay": 60}]]})
        engine.scripts.register(
            "child", {"turns": [[_spawn("go deeper", "scripted:grandchild")], [{"text": "x"}]]}
        )
        spawns = [_spawn("work", "scripted:child"), _spawn("work", "scripted:child")]
        engine.scripts.register("parent", {"turns": [spawns, [{"text": "never"}]]})
        run = await engine.run("go", model="scripted:parent", tools=["spawn_agent"])
        async with asyncio.timeout(10):
            while (
                len(await engine.list_runs(status="running")) < 5
            ):  # parent, 2 children, 2 grandchildren
                await asyncio.sleep(0.02)
        started = time.monotonic()
        done = await engine.cancel(run.run_id, wait=True, timeout=PROMPTLY)
        assert time.monotonic() - started < PROMPTLY
        assert done.status is culm.RunStatus.CANCELLED
        assert await engine.list_runs(status="running") == []
        assert await engine.list_runs(status="pending") == []
        assert len(await engine.list_runs(status="cancelled")) == 5
        async with asyncio.timeout(5):
            while task_kinds() - baseline:
                await asyncio.sleep(0.01)
        events = await collect(engine.subscribe(run.run_id))
        assert [e.status for e in events if e.type == "sub_agent_completed"] == ["cancelled"] * 2  # type: ignore[union-attr]
        ends = [e for e in events if e.type == "sub_agent_completed"]
        assert [e.error for e in ends] == ["the parent run was cancelled"] * 2  # type: ignore[union-attr]
        for child in await engine.get_children(run.run_id):
            end = (await collect(engine.subscribe(child.run_id)))[-1]
            assert end.reason == "the parent run was cancelled"  # type: ignore[union-attr]


async def test_a_child_error_is_a_tool_result_and_the_parent_goes_on(tmp_path: Path) -> None:
    engine = await _engine(tmp_path)
    async with engine:
        engine.scripts.register(
            "broken", {"turns": [[{"error": {"status": 400, "message": "bad request body"}}]]}
        )
        engine.scripts.register(
            "parent", {"turns": [[_spawn("try", "scripted:broken")], [{"text": "recovered"}]]}
        )
        run = await engine.run("go", model="scripted:parent", tools=["spawn_agent"])
        events = await collect(engine.subscribe(run.run_id))
    error = next(e for e in events if e.type == "tool_error")
    assert "the sub-agent failed" in error.error and "bad request body" in error.error  # type: ignore[union-attr]
    completed = next(e for e in events if e.type == "sub_agent_completed")
    assert completed.status == "error"  # type: ignore[union-attr]
    assert events[-1].type == "complete"
    assert events[-1].final_message == "recovered"  # type: ignore[union-attr]


async def test_cancelling_one_child_leaves_the_parent_running(tmp_path: Path) -> None:
    engine = await _engine(tmp_path)
    async with engine:
        engine.scripts.register("stuck", {"turns": [[{"text": "x"}, {"delay": 60}]]})
        engine.scripts.register(
            "parent", {"turns": [[_spawn("wait", "scripted:stuck")], [{"text": "parent done"}]]}
        )
        run = await engine.run("go", model="scripted:parent", tools=["spawn_agent"])
        async with asyncio.timeout(10):
            while not (children := await engine.get_children(run.run_id)):
                await asyncio.sleep(0.02)
        await engine.cancel(children[0].run_id, reason="not needed", wait=True)
        done = await engine.wait(run.run_id, timeout=10)
        events = await collect(engine.subscribe(run.run_id))
    assert done.status is culm.RunStatus.COMPLETED
    error = next(e for e in events if e.type == "tool_error")
    assert "the sub-agent was cancelled (not needed)" in error.error  # type: ignore[union-attr]


async def test_watchdog_ends_an_idle_child_with_timeout(tmp_path: Path) -> None:
    engine = await _engine(tmp_path, subagent_idle_timeout=0.3, subagent_heartbeat=0.1)
    async with engine:
        engine.scripts.register("idle", {"turns": [[{"text": "start"}, {"delay": 60}]]})
        engine.scripts.register(
            "parent", {"turns": [[_spawn("idle", "scripted:idle")], [{"text": "ok"}]]}
        )
        run = await engine.run("go", model="scripted:parent", tools=["spawn_agent"])
        events = await collect(engine.subscribe(run.run_id))
        [child] = await engine.get_children(run.run_id)
        child_end = (await collect(engine.subscribe(child.run_id)))[-1]
    completed = next(e for e in events if e.type == "sub_agent_completed")
    assert completed.status == "timeout"  # type: ignore[union-attr]
    assert "no event for 0.3 s" in (completed.error or "")  # type: ignore[union-attr]
    assert child.status is culm.RunStatus.CANCELLED
    assert child_end.reason == "timeout: no event for 0.3 s"  # type: ignore[union-attr]
    error = next(e for e in events if e.type == "tool_error")
    assert error.error == "the sub-agent timed out: no event for 0.3 s"  # type: ignore[union-attr]
    assert any(e.type == "sub_agent_heartbeat" for e in events)
    assert events[-1].type == "complete"


async def test_watchdog_ends_a_child_that_runs_too_long(tmp_path: Path) -> None:
    engine = await _engine(tmp_path, subagent_max_duration=0.4, subagent_heartbeat=0.05)
    async with engine:
        engine.scripts.register("busy", {"turns": [_ticks(500, delay=0.02)]})
        engine.scripts.register(
            "parent", {"turns": [[_spawn("busy", "scripted:busy")], [{"text": "ok"}]]}
        )
        run = await engine.run("go", model="scripted:parent", tools=["spawn_agent"])
        events = await collect(engine.subscribe(run.run_id))
    completed = next(e for e in events if e.type == "sub_agent_completed")
    assert completed.status == "timeout"  # type: ignore[union-attr]
    assert "ran longer than 0.4 s" in (completed.error or "")  # type: ignore[union-attr]
    beats = [e for e in events if e.type == "sub_agent_heartbeat"]
    assert len(beats) >= 3  # heartbeats while the child was busy, not only when idle


async def test_nesting_beyond_the_depth_limit_is_refused(tmp_path: Path) -> None:
    engine = await _engine(tmp_path, subagent_max_depth=1)
    async with engine:
        engine.scripts.register("leaf", {"turns": [[{"text": "leaf"}]]})
        engine.scripts.register(
            "child", {"turns": [[_spawn("deeper", "scripted:leaf")], [{"text": "child done"}]]}
        )
        engine.scripts.register(
            "parent", {"turns": [[_spawn("go", "scripted:child")], [{"text": "ok"}]]}
        )
        run = await engine.run("go", model="scripted:parent", tools=["spawn_agent"])
        await engine.wait(run.run_id, timeout=10)
        [child] = await engine.get_children(run.run_id)
        child_events = await collect(engine.subscribe(child.run_id))
        child_session = await engine.get_session(child.session_id)
    assert "spawn_agent" not in child_session.tools  # not offered at the last level
    error = next(e for e in child_events if e.type == "tool_error")
    assert "unknown tool 'spawn_agent'" in error.error  # type: ignore[union-attr]


async def test_depth_limit_error_names_the_limit(tmp_path: Path) -> None:
    engine = await _engine(tmp_path, subagent_max_depth=1)
    async with engine:
        engine.scripts.register(
            "child", {"turns": [[_spawn("deeper", "scripted:echo")], [{"text": "done"}]]}
        )
        engine.scripts.register(
            "parent",
            {"turns": [[_spawn("go", "scripted:child", tools=["spawn_agent"])], [{"text": "ok"}]]},
        )
        run = await engine.run("go", model="scripted:parent", tools=["spawn_agent"])
        events = await collect(engine.subscribe(run.run_id))
    error = next(e for e in events if e.type == "tool_error")
    assert "not available to a sub-agent" in error.error  # type: ignore[union-attr]


async def test_children_per_run_wait_their_turn_in_order(tmp_path: Path) -> None:
    engine = await _engine(tmp_path, subagents_per_run=1)
    async with engine:
        engine.scripts.register("brief", {"turns": [[{"delay": 0.05}, {"echo": True}]]})
        spawns = [_spawn(f"job {i}", "scripted:brief") for i in range(3)]
        engine.scripts.register("parent", {"turns": [spawns, [{"text": "ok"}]]})
        run = await engine.run("go", model="scripted:parent", tools=["spawn_agent"])
        await engine.wait(run.run_id, timeout=10)
        children = await engine.get_children(run.run_id)
    assert [c.input for c in children] == ["job 0", "job 1", "job 2"]
    for earlier, later in zip(children, children[1:], strict=False):
        assert earlier.completed_at <= later.started_at  # type: ignore[operator]


async def test_a_late_session_subscriber_sees_started_and_completed(tmp_path: Path) -> None:
    engine = await _engine(tmp_path)
    async with engine:
        engine.scripts.register(
            "parent", {"turns": [[_spawn("hi", "scripted:echo")], [{"text": "ok"}]]}
        )
        run = await engine.run("go", model="scripted:parent", tools=["spawn_agent"])
        await engine.wait(run.run_id)
        cache: list[RunEvent] = []
        async with asyncio.timeout(5):
            async for event in engine.subscribe_session(run.session_id):
                cache.append(event)
                if event.type == "complete":
                    break
    assert [e.type for e in cache if e.type.startswith("sub_agent")] == [
        "sub_agent_started",
        "sub_agent_completed",
    ]


def test_a_child_gets_a_subset_of_the_parent_tools_patterns_included() -> None:
    from culm.errors import ToolFailure
    from culm.runtime.subagents import _child_tools

    parent = culm.Session(
        session_id="s",
        model="scripted:echo",
        workspace="/tmp",
        tools=("read_file", "mcp__files__*", "spawn_agent"),
    )
    assert _child_tools(parent, None, may_spawn=False) == ["read_file", "mcp__files__*"]
    assert _child_tools(parent, ["mcp__files__read"], may_spawn=True) == ["mcp__files__read"]
    with pytest.raises(ToolFailure, match="bash"):
        _child_tools(parent, ["bash"], may_spawn=True)
    with pytest.raises(ToolFailure, match="spawn_agent"):
        _child_tools(parent, ["spawn_agent"], may_spawn=False)


async def test_child_usage_is_in_metrics_under_the_child_session_linked_to_the_parent(
    tmp_path: Path,
) -> None:
    engine = await _engine(tmp_path)
    async with engine:
        engine.scripts.register(
            "worker",
            {"turns": [[{"text": "done", "usage": {"prompt_tokens": 7, "completion_tokens": 3}}]]},
        )
        engine.scripts.register(
            "boss", {"turns": [[_spawn("t", "scripted:worker")], [{"text": "ok"}]]}
        )
        run = await engine.run("go", model="scripted:boss", tools=["spawn_agent"])
        await engine.wait(run.run_id)
        [child] = await engine.get_children(run.run_id)
        await engine.metrics.flush()
        detail = await engine.metrics.queries.session(child.session_id)
    assert detail is not None
    assert [(r.run_id, r.parent_run_id) for r in detail.runs] == [(child.run_id, run.run_id)]
    assert detail.tokens.prompt_tokens == 7 and detail.tokens.completion_tokens == 3


async def test_a_parent_taken_over_elsewhere_cannot_start_a_child(tmp_path: Path) -> None:
    """Review finding 5: the child's reservation is fenced on the parent's (owner, epoch)."""
    from culm.errors import LeaseLostError
    from culm.storage.schema import runs

    engine = await _engine(tmp_path)
    async with engine:
        engine.scripts.register("slow", {"turns": [[{"text": "x"}, {"delay": 60}]]})
        parent = await engine.run("go", model="scripted:slow")
        while (await engine.get_run(parent.run_id)).status is not culm.RunStatus.RUNNING:
            await asyncio.sleep(0.01)
        taken = runs.update().where(runs.c.run_id == parent.run_id)
        await engine.store.write(  # type: ignore[attr-defined]
            lambda conn: conn.execute(taken.values(epoch=runs.c.epoch + 1, owner="elsewhere"))
        )
        child_session = await engine.create_session(model="scripted:slow")

        with pytest.raises(LeaseLostError):
            await engine.start_run(child_session.session_id, "task", parent_run_id=parent.run_id)
        assert await engine.get_children(parent.run_id) == []
        await engine.cancel(parent.run_id)


async def test_a_child_session_has_its_parent_s_workspace_and_people_in_the_loop(
    tmp_path: Path,
) -> None:
    engine = await _engine(tmp_path)
    async with engine:
        engine.scripts.register("quick", {"turns": [[{"text": "ok"}]]})
        spawns = [
            _spawn("titled", "scripted:quick", title="helper"),
            _spawn("bare", "scripted:quick"),
        ]
        engine.scripts.register("parent", {"turns": [spawns, [{"text": "done"}]]})
        parent = await engine.create_session(
            model="scripted:parent",
            tools=["spawn_agent", "read_file"],
            workspace=str(tmp_path),
            require_approval=["read_file"],
            input_timeout=30.0,
            input_timeout_action="error",
        )
        run = await engine.start_run(parent.session_id, "go")
        assert (await engine.wait(run.run_id, timeout=20)).status is culm.RunStatus.COMPLETED
        sessions = [
            await engine.get_session(c.session_id) for c in await engine.get_children(run.run_id)
        ]
    assert sorted(s.metadata.get("title", "") for s in sessions) == ["", "helper"]
    assert sorted(len(s.metadata) for s in sessions) == [0, 1], "no title: no metadata"
    for session in sessions:
        assert session.system_prompt == CHILD_PROMPT
        assert session.workspace == str(tmp_path)
        assert list(session.require_approval) == ["read_file"]
        assert (session.input_timeout, session.input_timeout_action) == (30.0, "error")
