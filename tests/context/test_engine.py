"""Context window management through the Python API, on a provider that enforces a 4k window
(both wire formats, both backends)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

import culm
from culm.context.view import SUMMARY_HEADER
from culm.domain.events import ContextCompacted, RoundCompleted, TokenBudgetUpdated
from culm.domain.models import Usage
from culm.errors import SessionBusyError, SessionChangedError
from tests.context.conftest import model_of, windowed_settings
from tests.context.windowed import BigOutputTool, WindowedUpstream
from tests.support import collect


@pytest.fixture(autouse=True)
def _on_each_backend(backend: str) -> str:
    return backend


async def _run(engine: culm.Engine, session_id: str, text: str) -> list[culm.RunEvent]:
    run = await engine.start_run(session_id, text)
    return await collect(engine.subscribe(run.run_id), timeout=60)


async def _session(engine: culm.Engine, upstream: WindowedUpstream, **metadata: object) -> str:
    session = await engine.create_session(
        model=model_of(upstream), tools=["big_output"], metadata=metadata
    )
    return session.session_id


@pytest.mark.timeout(240)
async def test_forty_runs_fit_a_4k_window_with_auto_compaction(
    tmp_path: Path, upstream: WindowedUpstream, big_output: BigOutputTool
) -> None:
    settings = windowed_settings(tmp_path, upstream)
    async with culm.Engine(settings, tools=[big_output]) as engine:
        session_id = await _session(engine, upstream)
        events: list[culm.RunEvent] = []
        for n in range(40):
            run_events = await _run(engine, session_id, f"task {n}")
            assert run_events[-1].type == "complete", run_events[-1]
            events += run_events
        stored = await engine.get_messages(session_id)
        view = await engine.get_messages(session_id, view="model")
        runs = await engine.list_runs(session_id=session_id, limit=100)
    assert upstream.rejected == 0  # no request was ever refused as too long
    assert len(stored) == 40 * 4  # user, tool call, tool result, answer: every one kept
    compacted = [e for e in events if isinstance(e, ContextCompacted)]
    assert compacted and {e.trigger for e in compacted} == {"auto"}
    assert any("summarize" in e.strategy for e in compacted)
    assert all(e.tokens_after < e.tokens_before for e in compacted)
    assert view[0].content.startswith(SUMMARY_HEADER)
    assert len(view) < len(stored)
    # Usage is exact: the runs' usage is every usage the provider reported, summarizer's too.
    assert sum((run.usage for run in runs), Usage()) == upstream.usage_sent
    summarizer = [e for e in events if isinstance(e, RoundCompleted) and e.compaction]
    assert len(summarizer) == upstream.summaries > 0
    budgets = [e.usage for e in events if isinstance(e, TokenBudgetUpdated)]
    assert all(b.max_context_tokens == 4096 for b in budgets)
    assert {b.estimated for b in budgets} == {True, False}


@pytest.mark.timeout(240)
async def test_with_auto_compaction_off_an_overflow_is_compacted_and_retried(
    tmp_path: Path, upstream: WindowedUpstream, big_output: BigOutputTool
) -> None:
    settings = windowed_settings(tmp_path, upstream, context_auto_compact=False)
    async with culm.Engine(settings, tools=[big_output]) as engine:
        session_id = await _session(engine, upstream)
        events: list[culm.RunEvent] = []
        for n in range(40):
            run_events = await _run(engine, session_id, f"task {n}")
            assert run_events[-1].type == "complete", run_events[-1]
            events += run_events
        assert len(await engine.get_messages(session_id)) == 40 * 4
    compacted = [e for e in events if isinstance(e, ContextCompacted)]
    assert upstream.rejected == len(compacted) > 0  # each refusal: one compaction, one retry
    assert {e.trigger for e in compacted} == {"overflow"}
    pressure = [(e.run_id, e.level) for e in events if e.type == "context_pressure"]
    assert {level for _, level in pressure} == {"warning", "critical"}
    assert len(pressure) == len(set(pressure))  # once per level per run
    critical_runs = {run for run, level in pressure if level == "critical"}
    assert len(critical_runs) > 1  # and again in the next run


async def test_a_request_that_cannot_fit_ends_with_context_overflow(
    tmp_path: Path, upstream: WindowedUpstream, big_output: BigOutputTool
) -> None:
    settings = windowed_settings(tmp_path, upstream)
    async with culm.Engine(settings, tools=[big_output]) as engine:
        session_id = await _session(engine, upstream)
        events = await _run(engine, session_id, "x" * 40_000)
        run = await engine.get_run(events[-1].run_id)
    assert events[-1].type == "error"
    assert events[-1].code == "context_overflow"  # type: ignore[union-attr]
    assert "too long" in events[-1].message and "4096" in events[-1].message  # type: ignore[union-attr]
    assert run.status is culm.RunStatus.ERROR
    critical = [e for e in events if e.type == "context_pressure" and e.level == "critical"]
    assert len(critical) == 1  # once per level per run


async def test_the_model_view_survives_a_restart(
    tmp_path: Path, upstream: WindowedUpstream, big_output: BigOutputTool
) -> None:
    settings = windowed_settings(tmp_path, upstream)
    async with culm.Engine(settings, tools=[big_output]) as engine:
        session_id = await _session(engine, upstream)
        for n in range(8):
            await _run(engine, session_id, f"task {n}")
        view = await engine.get_messages(session_id, view="model")
        compactions = await engine.list_compactions(session_id)
    assert compactions and view[0].content.startswith(SUMMARY_HEADER)
    async with culm.Engine(settings, tools=[big_output]) as engine:
        assert await engine.get_messages(session_id, view="model") == view
        sent_before = len(upstream.requests)
        events = await _run(engine, session_id, "after the restart")
    assert events[-1].type == "complete"
    first = upstream.requests[sent_before].body.decode()
    assert compactions[-1].summary is not None and compactions[-1].summary in first


async def test_originals_are_intact_after_ten_compactions_and_summaries_fold(
    tmp_path: Path, upstream: WindowedUpstream, big_output: BigOutputTool
) -> None:
    settings = windowed_settings(tmp_path, upstream, context_auto_compact=False)
    async with culm.Engine(settings, tools=[big_output]) as engine:
        session_id = await _session(engine, upstream)
        await _run(engine, session_id, "task start")
        originals = await engine.get_messages(session_id)
        results = []
        for n in range(10):
            await _run(engine, session_id, f"task {n}")
            originals += (await engine.get_messages(session_id))[len(originals) :]
            results.append(await engine.compact(session_id))
        assert await engine.get_messages(session_id) == originals
        stored = await engine.list_compactions(session_id)
    assert [c.seq for c in stored] == list(range(1, 11))
    assert all(r.trigger == "manual" and r.messages_compacted > 0 for r in results)
    summary_requests = [
        r.json() for r in upstream.requests if b"You compact the conversation" in r.body
    ]
    assert len(summary_requests) == 10
    for n, request in enumerate(summary_requests[1:], start=1):
        assert f"Previous summary:\\nsummary #{n} of the conversation" in str(request) or (
            f"Previous summary:\nsummary #{n} of the conversation" in str(request)
        )
    assert stored[-1].summary == "summary #10 of the conversation"
    assert stored[-1].summary_usage.total_tokens > 0


async def test_manual_compaction_is_refused_while_a_run_is_active(
    tmp_path: Path, upstream: WindowedUpstream, big_output: BigOutputTool
) -> None:
    settings = windowed_settings(tmp_path, upstream)
    async with culm.Engine(settings, tools=[big_output]) as engine:
        session_id = await _session(engine, upstream)
        upstream.answers_released.clear()  # the run waits on its model until cancelled
        run = await engine.start_run(session_id, "go")
        async with asyncio.timeout(30):  # a compaction that went ahead fails, never hangs
            with pytest.raises(SessionBusyError):
                await engine.compact(session_id)
        ended = await engine.cancel(run.run_id, wait=True, timeout=20)
    assert ended.status is culm.RunStatus.CANCELLED


async def test_cancel_during_the_summarizer_call(
    tmp_path: Path, upstream: WindowedUpstream, big_output: BigOutputTool
) -> None:
    # A trigger of 1 %: every request compacts, so the next run begins with a summarizer call.
    settings = windowed_settings(tmp_path, upstream, context_trigger_percent=1)
    async with culm.Engine(settings, tools=[big_output]) as engine:
        session_id = await _session(engine, upstream)
        for n in range(2):
            await _run(engine, session_id, f"task {n}")
        before = await engine.list_compactions(session_id)
        upstream.stall_summaries = True
        upstream.summary_requested.clear()
        run = await engine.start_run(session_id, "one more")
        async with asyncio.timeout(30):
            await upstream.summary_requested.wait()
        ended = await engine.cancel(run.run_id, wait=True, timeout=20)
        events = await collect(engine.subscribe(run.run_id))
        assert await engine.list_compactions(session_id) == before  # none stored half-made
    assert ended.status is culm.RunStatus.CANCELLED
    assert events[-1].type == "cancelled"
    assert not [e for e in events if e.type == "context_compacted"]
    async with asyncio.timeout(10):
        await upstream.client_closed.wait()  # the summarizer's stream was closed


async def test_the_compact_context_tool_compacts_before_the_next_call(
    tmp_path: Path, upstream: WindowedUpstream, big_output: BigOutputTool
) -> None:
    from culm.providers.scripted import Script

    settings = windowed_settings(tmp_path, upstream)
    async with culm.Engine(settings, tools=[big_output]) as engine:
        engine.scripts.register(
            "compactor",
            Script(turns=[[{"tool_call": {"name": "compact_context", "arguments": {}}}]]),
        )
        session = await engine.create_session(model="scripted:compactor", tools=["compact_context"])
        run = await engine.start_run(session.session_id, "tidy up")
        events = await collect(engine.subscribe(run.run_id))
    assert events[-1].type == "complete"
    [compacted] = [e for e in events if isinstance(e, ContextCompacted)]
    assert compacted.trigger == "manual"


async def test_context_events_are_in_the_session_replay_cache(
    tmp_path: Path, upstream: WindowedUpstream, big_output: BigOutputTool
) -> None:
    """context_pressure and context_compacted are critical: a late session subscriber gets them."""
    settings = windowed_settings(tmp_path, upstream, context_auto_compact=False)
    async with culm.Engine(settings, tools=[big_output]) as engine:
        session_id = await _session(engine, upstream)
        for n in range(3):
            events = await _run(engine, session_id, f"task {n}")
        stream = engine.subscribe_session(session_id)
        replayed: list[culm.RunEvent] = []
        async with contextlib.aclosing(stream), asyncio.timeout(20):
            async for event in stream:
                replayed.append(event)
                if event.type == "complete":
                    break
    live = [e for e in events if e.type in {"context_pressure", "context_compacted"}]
    assert [e.type for e in live] == [
        "context_pressure",
        "context_pressure",
        "context_compacted",
    ]
    assert [e for e in replayed if e.type in {"context_pressure", "context_compacted"}] == live


async def test_summarizer_calls_are_metered_and_marked_compaction(
    tmp_path: Path, upstream: WindowedUpstream, big_output: BigOutputTool
) -> None:
    settings = windowed_settings(tmp_path, upstream, context_trigger_percent=1)
    async with culm.Engine(settings, tools=[big_output]) as engine:
        session_id = await _session(engine, upstream)
        for n in range(3):
            await _run(engine, session_id, f"task {n}")
        await engine.metrics.flush()
        detail = await engine.metrics.queries.session(session_id)
        runs = await engine.list_runs(session_id=session_id)
    assert detail is not None and upstream.summaries > 0
    marked = [r for r in detail.rounds if ":compaction:" in r.round_id]
    assert len(marked) == upstream.summaries
    assert detail.tokens == sum((run.usage for run in runs), Usage()) == upstream.usage_sent


async def _idle_session_to_compact(engine: culm.Engine, upstream: WindowedUpstream) -> str:
    """A session with enough behind it that a manual compaction summarizes (no auto ones)."""
    session_id = await _session(engine, upstream)
    for n in range(4):
        assert (await _run(engine, session_id, f"task {n}"))[-1].type == "complete"
    return session_id


async def test_a_manual_compactions_summarizer_call_is_in_the_metrics(
    tmp_path: Path, upstream: WindowedUpstream
) -> None:
    """Outside a run: a round of the session with no run, marked compaction, its usage exact."""
    settings = windowed_settings(tmp_path, upstream, context_auto_compact=False)
    async with culm.Engine(settings, tools=[BigOutputTool(size=2000)]) as engine:
        session_id = await _idle_session_to_compact(engine, upstream)
        compaction = await engine.compact(session_id)
        await engine.metrics.flush()
        detail = await engine.metrics.queries.session(session_id)
        runs = await engine.list_runs(session_id=session_id)
    assert compaction.summary is not None and upstream.summaries == 1
    assert detail is not None
    [marked] = [r for r in detail.rounds if ":compaction:" in r.round_id]
    assert marked.run_id is None and marked.status == "success"
    assert marked.usage == compaction.summary_usage and marked.usage.total_tokens > 0
    run_usage = sum((run.usage for run in runs), Usage())
    assert detail.tokens == run_usage + compaction.summary_usage == upstream.usage_sent


async def test_a_run_started_during_a_manual_compaction_makes_it_busy(
    tmp_path: Path, upstream: WindowedUpstream
) -> None:
    """The 409 check is part of the compaction's write: a run that takes the session's slot
    while the summarizer writes leaves the compaction unstored (its view is the run's)."""
    settings = windowed_settings(tmp_path, upstream, context_auto_compact=False)
    async with culm.Engine(settings, tools=[BigOutputTool(size=2000)]) as engine:
        session_id = await _idle_session_to_compact(engine, upstream)
        upstream.summaries_released.clear()
        upstream.summary_requested.clear()
        compacting = asyncio.create_task(engine.compact(session_id))
        async with asyncio.timeout(30):
            await upstream.summary_requested.wait()
        upstream.answers_released.clear()  # the run stays active until the compaction is done
        run = await engine.start_run(session_id, "meanwhile")  # the slot is free: it starts
        upstream.summaries_released.set()
        with pytest.raises(SessionBusyError) as busy:
            await compacting
        upstream.answers_released.set()
        ended = await engine.wait(run.run_id, timeout=30)
        stored = await engine.list_compactions(session_id)
    assert busy.value.run_id == run.run_id
    assert ended.status is culm.RunStatus.COMPLETED
    assert [c for c in stored if c.trigger == "manual"] == []


async def test_a_run_that_came_and_went_during_a_manual_compaction_makes_it_refused(
    tmp_path: Path, upstream: WindowedUpstream
) -> None:
    """Made from a transcript that has grown since: not stored (it would stand for less than
    the run's own view), refused naming the run; compacting again then works."""
    settings = windowed_settings(tmp_path, upstream, context_auto_compact=False)
    async with culm.Engine(settings, tools=[BigOutputTool(size=2000)]) as engine:
        session_id = await _idle_session_to_compact(engine, upstream)
        upstream.summaries_released.clear()
        upstream.summary_requested.clear()
        compacting = asyncio.create_task(engine.compact(session_id))
        async with asyncio.timeout(30):
            await upstream.summary_requested.wait()
        events = await _run(engine, session_id, "meanwhile")
        upstream.summaries_released.set()
        with pytest.raises(SessionChangedError) as changed:
            await compacting
        assert await engine.list_compactions(session_id) == []
        again = await engine.compact(session_id)
        stored = await engine.get_messages(session_id)
    assert events[-1].type == "complete" and changed.value.run_id == events[-1].run_id
    assert again.seq == 1 and again.message_count == len(stored)
