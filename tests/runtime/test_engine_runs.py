"""Runs through the public Python API: streaming, replay, multitask, cancel, the terminal rule."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import culm
from culm.domain.events import is_terminal
from tests.support import PROMPTLY, SleepTool, collect, settings, tool_turn, types


@pytest.fixture
async def engine(tmp_path: Path) -> culm.Engine:
    async with culm.Engine(settings(tmp_path), tools=[SleepTool()]) as engine:
        yield engine  # type: ignore[misc]


async def test_demo_run_streams_every_event_in_order(engine: culm.Engine) -> None:
    session = await engine.create_session(model="scripted:demo", tools=["read"])
    run = await engine.start_run(session.session_id, "what is here?")
    events = await collect(engine.subscribe(run.run_id))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].type == "execution_started"
    assert events[-1].type == "complete"
    assert "tool_complete" in types(events)
    assert all(e.run_id == run.run_id and e.session_id == session.session_id for e in events)
    final = await engine.get_run(run.run_id)
    assert final.status is culm.RunStatus.COMPLETED
    assert final.last_seq == len(events)
    assert final.round_count == 2
    assert final.last_tool_name == "list_dir"
    assert final.usage == events[-1].usage  # type: ignore[union-attr]
    assert final.usage.total_tokens > 0
    transcript = await engine.get_messages(session.session_id)
    assert [m.role for m in transcript] == ["user", "assistant", "tool", "assistant"]


async def test_terminal_status_is_visible_once_the_terminal_event_is_seen(
    engine: culm.Engine,
) -> None:
    for _ in range(20):
        run = await engine.run("hi", model="scripted:echo")
        events = await collect(engine.subscribe(run.run_id))
        assert events[-1].type == "complete"
        assert (await engine.get_run(run.run_id)).status is culm.RunStatus.COMPLETED
    assert len(engine.registry) == 0


async def test_replay_from_any_cursor_is_exact(engine: culm.Engine) -> None:
    run = await engine.run("go", model="scripted:demo", tools=["read"])
    full = await collect(engine.subscribe(run.run_id))
    for after in range(len(full) + 1):
        replay = await collect(engine.subscribe(run.run_id, after=after))
        assert replay == full[after:]


async def test_many_subscribers_receive_the_identical_sequence(engine: culm.Engine) -> None:
    engine.scripts.register("many", {"turns": [[{"text": "x" * 300, "chunk_size": 1}]]})
    session = await engine.create_session(model="scripted:many")
    run = await engine.start_run(session.session_id, "go")
    streams = [collect(engine.subscribe(run.run_id)) for _ in range(50)]
    results = await asyncio.gather(*streams)
    assert all(result == results[0] for result in results)
    assert [e.seq for e in results[0]] == list(range(1, len(results[0]) + 1))


async def test_subscribers_joining_mid_run_get_no_gap_and_no_duplicate(
    engine: culm.Engine,
) -> None:
    steps = [{"delay": 0.002}, {"text": "t"}] * 150
    engine.scripts.register("steady", {"turns": [steps]})
    run = await engine.run("go", model="scripted:steady")
    results = []
    for cursor in (0, 5, 40, 90):
        await asyncio.sleep(0.05)
        results.append((cursor, await _collect_later(engine, run.run_id, cursor)))
    full = await collect(engine.subscribe(run.run_id))
    for cursor, events in results:
        assert events == full[cursor:]


async def _collect_later(engine: culm.Engine, run_id: str, after: int) -> list[culm.RunEvent]:
    return await collect(engine.subscribe(run_id, after=after))


async def test_slow_subscriber_is_resumed_from_the_store_not_skipped(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path, subscriber_queue_size=4)) as engine:
        engine.scripts.register("burst", {"turns": [[{"text": "y" * 2000, "chunk_size": 1}]]})
        run = await engine.run("go", model="scripted:burst")
        received = []
        async for event in engine.subscribe(run.run_id):
            received.append(event)
            if len(received) % 50 == 0:
                await asyncio.sleep(0.01)  # fall far behind the run
        assert [e.seq for e in received] == list(range(1, len(received) + 1))
        assert received[-1].type == "complete"
        assert received == await collect(engine.subscribe(run.run_id))


async def test_unknown_run_and_session_raise_not_found(engine: culm.Engine) -> None:
    with pytest.raises(culm.NotFoundError):
        await collect(engine.subscribe("nope"))
    with pytest.raises(culm.NotFoundError):
        await engine.cancel("nope")
    with pytest.raises(culm.NotFoundError):
        await engine.start_run("nope", "hi")
    with pytest.raises(culm.NotFoundError):
        await engine.wait("nope")


async def test_bad_input_is_a_user_error_naming_the_problem(engine: culm.Engine) -> None:
    with pytest.raises(culm.UnknownModelError, match="provider:model"):
        await engine.create_session(model="gpt-4o")
    with pytest.raises(culm.UnknownModelError, match="nope"):
        await engine.create_session(model="scripted:nope")
    with pytest.raises(culm.UnknownToolError, match="available"):
        await engine.create_session(model="scripted:echo", tools=["teleport"])
    with pytest.raises(culm.ConfigError, match="workspace"):
        await engine.create_session(model="scripted:echo", workspace="/does/not/exist")
    assert await engine.list_sessions() == []


async def test_reject_policy_reports_the_active_run(engine: culm.Engine) -> None:
    session = await engine.create_session(model="scripted:slow")
    first = await engine.start_run(session.session_id, "one")
    with pytest.raises(culm.AlreadyRunningError) as info:
        await engine.start_run(session.session_id, "two")
    assert info.value.run_id == first.run_id
    await engine.cancel(first.run_id, wait=True)


async def test_enqueue_runs_after_the_active_run(engine: culm.Engine) -> None:
    engine.scripts.register("brief", {"turns": [[{"delay": 0.2}, {"echo": True}]]})
    session = await engine.create_session(model="scripted:brief")
    first = await engine.start_run(session.session_id, "one")
    second = await engine.start_run(session.session_id, "two", multitask="enqueue")
    third = await engine.start_run(session.session_id, "three", multitask="enqueue")
    assert second.queued and third.queued
    done = [await engine.wait(r.run_id, timeout=10) for r in (first, second, third)]
    assert [r.status for r in done] == [culm.RunStatus.COMPLETED] * 3
    assert done[0].completed_at <= done[1].started_at  # type: ignore[operator]
    assert done[1].completed_at <= done[2].started_at  # type: ignore[operator]
    texts = [m.content for m in await engine.get_messages(session.session_id)]
    assert texts == ["one", "You said: one", "two", "You said: two", "three", "You said: three"]


async def test_interrupt_cancels_the_active_run_and_starts_the_new_one(
    engine: culm.Engine,
) -> None:
    session = await engine.create_session(model="scripted:slow")
    first = await engine.start_run(session.session_id, "one")
    queued = await engine.start_run(
        session.session_id, "later", multitask="enqueue", model="scripted:echo"
    )
    second = await engine.start_run(
        session.session_id, "now", multitask="interrupt", model="scripted:echo"
    )
    done = await engine.wait(second.run_id, timeout=10)
    assert done.status is culm.RunStatus.COMPLETED
    first_run = await engine.get_run(first.run_id)
    assert first_run.status is culm.RunStatus.CANCELLED
    assert first_run.completed_at <= done.started_at  # type: ignore[operator]
    # The interrupting run went ahead of the run queued earlier.
    later = await engine.wait(queued.run_id, timeout=30)
    assert later.started_at >= done.completed_at  # type: ignore[operator]


async def test_cancel_inside_a_model_stream_ends_promptly(engine: culm.Engine) -> None:
    engine.scripts.register("hang", {"turns": [[{"text": "a"}, {"delay": 60}, {"text": "b"}]]})
    run = await engine.run("go", model="scripted:hang")
    stream = engine.subscribe(run.run_id)
    async for event in stream:
        if event.type == "token":
            break
    started = time.monotonic()
    done = await engine.cancel(run.run_id, wait=True, timeout=PROMPTLY)
    assert time.monotonic() - started < PROMPTLY
    assert done.status is culm.RunStatus.CANCELLED
    rest = await collect(engine.subscribe(run.run_id, after=event.seq))
    assert rest[-1].type == "cancelled"
    assert rest[-1].reason == "cancelled by request"  # type: ignore[union-attr]


async def test_cancel_inside_a_tool_call_ends_promptly(engine: culm.Engine) -> None:
    engine.scripts.register("nap", {"turns": [tool_turn("sleep", {"seconds": 60})]})
    run = await engine.run("go", model="scripted:nap", tools=["sleep"])
    async for event in engine.subscribe(run.run_id):
        if event.type == "tool_start":
            break
    await asyncio.sleep(0.05)
    started = time.monotonic()
    done = await engine.cancel(run.run_id, wait=True, timeout=PROMPTLY)
    assert time.monotonic() - started < PROMPTLY
    assert done.status is culm.RunStatus.CANCELLED
    assert done.last_tool_name == "sleep"
    assert done.last_tool_phase is not None


async def test_cancel_is_idempotent_and_cancels_queued_runs(engine: culm.Engine) -> None:
    session = await engine.create_session(model="scripted:slow")
    active = await engine.start_run(session.session_id, "one")
    queued = await engine.start_run(session.session_id, "two", multitask="enqueue")
    cancelled = await engine.cancel(queued.run_id, wait=True, timeout=5)
    assert cancelled.status is culm.RunStatus.CANCELLED
    events = await collect(engine.subscribe(queued.run_id))
    assert types(events) == ["cancelled"]
    for _ in range(3):
        again = await engine.cancel(active.run_id, wait=True, timeout=5)
        assert again.status is culm.RunStatus.CANCELLED
    events = await collect(engine.subscribe(active.run_id))
    assert sum(is_terminal(e) for e in events) == 1
    assert (await engine.get_run(queued.run_id)).started_at is None


async def test_wait_times_out_on_a_running_run(engine: culm.Engine) -> None:
    run = await engine.run("go", model="scripted:slow")
    with pytest.raises(TimeoutError):
        await engine.wait(run.run_id, timeout=0.1)
    await engine.cancel(run.run_id, wait=True)


async def test_list_and_filter_runs(engine: culm.Engine) -> None:
    a = await engine.run("a", model="scripted:echo")
    b = await engine.run("b", model="scripted:slow")
    await engine.wait(a.run_id)
    running = await engine.list_runs(status="running")
    assert [r.run_id for r in running] == [b.run_id]
    assert [r.run_id for r in await engine.list_runs(session_id=a.session_id)] == [a.run_id]
    await engine.cancel(b.run_id, wait=True)


async def test_delete_session_refused_while_a_run_is_active(engine: culm.Engine) -> None:
    run = await engine.run("go", model="scripted:slow")
    with pytest.raises(culm.UserError):
        await engine.delete_session(run.session_id)
    await engine.cancel(run.run_id, wait=True)
    await engine.delete_session(run.session_id)
    with pytest.raises(culm.NotFoundError):
        await engine.get_session(run.session_id)
