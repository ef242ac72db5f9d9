"""A cancel at any point of a run's life ends it: terminal status and event, session free.

A run cancelled before its task's first step used to stay ``pending`` for good (its clean-up
lived in a ``try`` the task never entered), holding its session and hanging a clean stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import culm
from culm.domain.events import is_terminal
from culm.runtime.runner import Runner
from tests.support import SleepTool, collect, launched, tool_turn, types
from tests.support import settings as engine_settings


@pytest.fixture
async def engine(database_url: str, tmp_path: Path) -> AsyncIterator[culm.Engine]:
    settings = engine_settings(tmp_path, scheduler=False, database_url=database_url)
    async with culm.Engine(settings, tools=[SleepTool()]) as engine:
        engine.scripts.register("nap", {"turns": [tool_turn("sleep", {"seconds": 30})]})
        engine.scripts.register("ticks", {"turns": [[{"delay": 0.001}, {"text": "t"}] * 20]})
        yield engine


async def assert_all_ended(engine: culm.Engine, runs: list[culm.Run]) -> None:
    """Every run terminal with exactly one terminal event (its last), no runner left, and each
    session free for a new run."""
    for run in runs:
        done = await engine.wait(run.run_id, timeout=10)
        assert done.status.is_terminal, done
        events = await collect(engine.subscribe(run.run_id), timeout=10)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert sum(is_terminal(e) for e in events) == 1
        assert is_terminal(events[-1])
        assert done.last_seq == events[-1].seq
    assert len(engine.registry) == 0
    for session_id in {run.session_id for run in runs}:
        assert await engine.store.get_active_run(session_id) is None
        assert await engine.list_runs(session_id=session_id, status="pending") == []


async def promoted_not_started(engine: culm.Engine) -> tuple[list[culm.Run], Runner]:
    """A queued run the moment it is launched (its runner registered) and before its task's
    first step: the registry wakes watchers before the task is created."""
    session = await engine.create_session(model="scripted:nap", tools=["sleep"])
    first = await engine.start_run(session.session_id, "one")
    queued = await engine.start_run(session.session_id, "two", multitask="enqueue")
    running = await launched(engine, first.run_id)  # claimed by the dispatcher, not in-line
    with engine.registry.watch(queued.run_id) as watcher:
        # The engine's own cancel, requested without awaiting anything: this task's next
        # suspension is the wait below, so it wakes before the launched task's first step.
        running.request_cancel("cancelled by request")
        async with asyncio.timeout(10):
            await watcher.wait()
    runner = engine.registry.get(queued.run_id)
    assert runner is not None and runner.task is not None and not runner.started
    return [first, queued], runner


async def test_a_run_cancelled_before_its_first_step_ends_and_frees_its_session(
    engine: culm.Engine,
) -> None:
    runs, runner = await promoted_not_started(engine)
    await engine.cancel(runner.run_id, reason="changed my mind")
    done = await engine.cancel(runner.run_id, wait=True, timeout=5)
    assert done.status is culm.RunStatus.CANCELLED
    events = await collect(engine.subscribe(runner.run_id))
    assert types(events) == ["cancelled"]
    assert events[0].reason == "changed my mind"  # type: ignore[union-attr]
    await assert_all_ended(engine, runs)
    again = await engine.start_run(runs[0].session_id, "again", model="scripted:echo")  # no 409
    assert (await engine.wait(again.run_id, timeout=10)).status is culm.RunStatus.COMPLETED


async def test_a_task_cancelled_from_outside_before_its_first_step_still_ends_its_run(
    engine: culm.Engine,
) -> None:
    runs, runner = await promoted_not_started(engine)
    assert runner.task is not None
    runner.task.cancel()  # not the engine's cancel: the task never runs a line of its own
    done = await engine.wait(runner.run_id, timeout=5)
    assert done.status is culm.RunStatus.CANCELLED
    await assert_all_ended(engine, runs)


async def test_a_clean_stop_ends_a_run_cancelled_before_its_first_step(tmp_path: Path) -> None:
    engine = culm.Engine(engine_settings(tmp_path, scheduler=False), tools=[SleepTool()])
    async with engine:
        engine.scripts.register("nap", {"turns": [tool_turn("sleep", {"seconds": 30})]})
        runs, runner = await promoted_not_started(engine)
        await engine.cancel(runner.run_id)
        async with asyncio.timeout(10):
            await engine.drain()
        assert (await engine.get_run(runner.run_id)).status is culm.RunStatus.CANCELLED


async def test_cancel_right_after_start_ends_the_run_and_frees_the_session(
    engine: culm.Engine,
) -> None:
    session = await engine.create_session(model="scripted:echo")
    run = await engine.start_run(session.session_id, "hi")
    cancelled = await engine.cancel(run.run_id, wait=True, timeout=5)
    assert cancelled.status is culm.RunStatus.CANCELLED
    again = await engine.start_run(session.session_id, "again")  # not 409
    assert (await engine.wait(again.run_id, timeout=10)).status is culm.RunStatus.COMPLETED
    await assert_all_ended(engine, [run, again])


@pytest.mark.timeout(120)
async def test_interrupts_racing_each_other_leave_no_run_pending(engine: culm.Engine) -> None:
    for _ in range(5):
        session = await engine.create_session(model="scripted:ticks")
        runs = await asyncio.gather(
            *(
                engine.start_run(session.session_id, f"go {i}", multitask="interrupt")
                for i in range(8)
            )
        )
        await assert_all_ended(engine, list(runs))


@pytest.mark.timeout(300)
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    model=st.sampled_from(["scripted:echo", "scripted:ticks", "scripted:nap"]),
    yields=st.integers(min_value=0, max_value=40),
    events_first=st.integers(min_value=0, max_value=6),
    outside=st.booleans(),
    queued=st.booleans(),
)
async def test_a_cancel_at_any_point_ends_every_run_and_frees_every_session(
    engine: culm.Engine, model: str, yields: int, events_first: int, outside: bool, queued: bool
) -> None:
    session = await engine.create_session(model=model, tools=["sleep"])
    run = await engine.start_run(session.session_id, "go")
    runs = [run]
    if queued:
        runs.append(await engine.start_run(session.session_id, "next", multitask="enqueue"))
    for _ in range(yields):
        await asyncio.sleep(0)
    if events_first:
        seen = 0
        async for event in engine.subscribe(run.run_id):
            seen += 1
            # While the `nap` run's tool sleeps (30 s) it emits nothing: waiting for more
            # events than it emits before then would wait the sleep out.
            if seen >= events_first or is_terminal(event) or event.type == "tool_start":
                break
    runner = engine.registry.get(run.run_id)
    if outside and runner is not None and runner.task is not None:
        runner.task.cancel()
    else:
        await engine.cancel(run.run_id)
    for other in runs[1:]:
        await engine.cancel(other.run_id)
    await assert_all_ended(engine, runs)
