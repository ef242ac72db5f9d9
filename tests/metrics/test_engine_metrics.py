"""Metrics of real runs through the Engine: derived from stored run events, partial rounds of
cut streams, message counts, and the reconciling of runs whose end was never seen."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import culm
from culm.domain.events import RoundCompleted
from culm.domain.models import Run, RunStatus, Usage
from culm.domain.time import utc_now
from culm.metrics import events as m
from culm.metrics.pipeline import MetricsConfig, MetricsPipeline
from culm.metrics.store import MetricsStore
from culm.storage.sql import SqlStore
from tests.providers.fakes import FakeUpstream, Reply, anthropic_events, openai_events
from tests.support import SleepTool, collect, settings, tool_turn

# Every test on both backends (SQLite and PostgreSQL), same body: see ``backend``.
pytestmark = pytest.mark.usefixtures("backend")


async def test_a_run_is_recorded_with_its_rounds_tools_and_messages(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path)) as engine:
        session = await engine.create_session(model="scripted:demo", tools=["read"])
        for prompt in ("first", "second"):
            run = await engine.start_run(session.session_id, prompt)
            await engine.wait(run.run_id)
        await engine.metrics.flush()
        detail = await engine.metrics.queries.session(session.session_id)
        summary = await engine.metrics.queries.summary()
        transcript = await engine.get_messages(session.session_id)
        runs = await engine.list_runs(session_id=session.session_id)
    assert detail is not None
    assert [r.status for r in detail.runs] == ["completed", "completed"]
    assert sum(r.message_count for r in detail.runs) == len(transcript)
    assert [len(r.tool_calls) for r in detail.rounds] == [1, 0, 1, 0]
    assert {r.run_id for r in detail.rounds} == {run.run_id for run in runs}
    assert detail.tokens == sum((run.usage for run in runs), Usage())
    assert (summary.sessions, summary.runs, summary.rounds, summary.tool_calls) == (1, 2, 4, 2)
    assert summary.active_sessions == 0


async def test_a_run_cancelled_in_a_tool_call_is_recorded_cancelled(tmp_path: Path) -> None:
    sleep = SleepTool()
    async with culm.Engine(settings(tmp_path), tools=[sleep]) as engine:
        engine.scripts.register("t", {"turns": [tool_turn("sleep", {"seconds": 30})]})
        run = await engine.run("go", model="scripted:t", tools=["sleep"])
        await asyncio.wait_for(sleep.started.wait(), 10)
        await engine.cancel(run.run_id, wait=True, timeout=10)
        await engine.metrics.flush()
        summary = await engine.metrics.queries.summary()
    assert (summary.runs_by_status.cancelled, summary.active_sessions) == (1, 0)
    assert (summary.rounds, summary.failed_rounds) == (1, 0)  # its model call had finished


def _settings(upstream: FakeUpstream, home: Path) -> culm.Settings:
    return culm.Settings(
        home=home,
        openai_api_key="sk-test",
        openai_base_url=f"{upstream.url}/v1",
        anthropic_api_key="ak-test",
        anthropic_base_url=upstream.url,
    )


def _start(input_tokens: int, cached: int) -> dict[str, Any]:
    usage = {"input_tokens": input_tokens, "output_tokens": 1, "cache_read_input_tokens": cached}
    return {"type": "message_start", "message": {"usage": usage}}


def _text(text: str) -> list[dict[str, Any]]:
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    delta = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": text},
    }
    return [block, delta]


async def test_a_stream_cancelled_after_usage_ends_with_a_partial_round(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.push(
        Reply(chunks=anthropic_events(_start(700, 500), *_text("Thinking…")), end="stall")
    )
    async with culm.Engine(_settings(upstream, tmp_path)) as engine:
        run = await engine.run("go", model="anthropic:claude-sonnet-4-5")
        events = []
        async with asyncio.timeout(10):
            async for event in engine.subscribe(run.run_id):
                events.append(event)
                if event.type == "token":
                    await engine.cancel(run.run_id)
        done = await engine.wait(run.run_id, timeout=10)
        await engine.metrics.flush()
        detail = await engine.metrics.queries.session(run.session_id)
        summary = await engine.metrics.queries.summary()
    reported = Usage(
        prompt_tokens=1200, completion_tokens=1, total_tokens=1201, cache_read_tokens=500
    )
    partial = [e for e in events if isinstance(e, RoundCompleted)]
    assert [(e.partial, e.error, e.usage) for e in partial] == [(True, "cancelled", reported)]
    assert events[-1].type == "cancelled"
    assert done.status is RunStatus.CANCELLED and done.usage == reported
    assert detail is not None
    (record,) = detail.rounds
    assert (record.status, record.partial, record.error, record.usage) == (
        "cancelled",  # the cancel cut it: not a failure
        True,
        "cancelled",
        reported,
    )
    assert (summary.rounds, summary.failed_rounds, summary.partial_rounds) == (1, 0, 1)


async def test_an_upstream_cut_after_output_keeps_the_usage_sent_before_it(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    usage = {"prompt_tokens": 50, "completion_tokens": 4, "total_tokens": 54}
    upstream.push(
        Reply(
            chunks=openai_events(
                {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]},
                {"choices": [], "usage": usage},
            ),
            end="cut",
        )
    )
    async with culm.Engine(_settings(upstream, tmp_path)) as engine:
        run = await engine.run("go", model="openai:gpt-4o-mini")
        events = await collect(engine.subscribe(run.run_id))
        await engine.metrics.flush()
        summary = await engine.metrics.queries.summary()
    (partial,) = [e for e in events if isinstance(e, RoundCompleted)]
    assert partial.partial and partial.error is not None and "connection" in partial.error
    assert events[-1].type == "error"
    assert summary.tokens == Usage(prompt_tokens=50, completion_tokens=4, total_tokens=54)
    assert (summary.partial_rounds, summary.runs_by_status.failed) == (1, 1)


# Reconciling runs whose end the metrics never saw (ended by crash recovery, say)


@pytest.fixture
async def pipeline(
    database_url: str,
) -> AsyncIterator[tuple[MetricsPipeline, dict[str, Run | None]]]:
    known: dict[str, Run | None] = {}

    async def lookup(run_id: str) -> Run | None:
        return known.get(run_id)

    store = SqlStore(database_url)
    await store.start()
    metrics = MetricsPipeline()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(store.aclose)
        metrics_store = MetricsStore(store.write, store.read_connection, store.dialect.name)
        await metrics.start(metrics_store, stack, model_of=lambda run_id: None, lookup=lookup)
        yield metrics, known


async def test_reconcile_closes_runs_the_engine_has_ended(
    pipeline: tuple[MetricsPipeline, dict[str, Run | None]],
) -> None:
    metrics, known = pipeline
    long_ago = utc_now() - timedelta(minutes=5)
    for run_id in ("errored", "gone", "running"):
        meta = m.EventMeta(occurred_at=long_ago, trace_id=run_id)
        metrics.emit(m.SessionStarted(meta=meta, session_id=f"s-{run_id}", model="m"))
        meta = m.EventMeta(occurred_at=long_ago, trace_id=run_id)
        metrics.emit(
            m.RoundStarted(meta=meta, round_id=f"{run_id}:1:1", session_id=f"s-{run_id}", model="m")
        )
    known["errored"] = Run(
        run_id="errored",
        session_id="s-errored",
        model="m",
        status=RunStatus.ERROR,
        completed_at=utc_now(),
    )
    known["running"] = Run(
        run_id="running", session_id="s-running", model="m", status=RunStatus.RUNNING
    )
    await metrics.flush()
    assert await metrics.reconcile() == 2
    await metrics.flush()
    summary = await metrics.queries.summary()
    assert (summary.runs_by_status.failed, summary.runs_by_status.running) == (2, 1)
    assert (summary.rounds, summary.failed_rounds) == (2, 2)
    assert await metrics.reconcile() == 0


async def test_overflow_is_dropped_counted_and_recorded_once(database_url: str) -> None:
    store = SqlStore(database_url)
    await store.start()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(store.aclose)
        metrics = MetricsPipeline(MetricsConfig(queue_size=5, batch_size=100))
        metrics_store = MetricsStore(store.write, store.read_connection, store.dialect.name)
        await metrics.start(metrics_store, stack, model_of=lambda run_id: None)
        accepted = [
            metrics.emit(
                m.SessionStarted(meta=m.EventMeta.with_trace_id(f"r{n}"), session_id="s", model="m")
            )
            for n in range(12)
        ]  # no await in between: the worker cannot drain
        assert accepted.count(True) == 5
        await metrics.flush()
        system = await metrics.system()
        summary = await metrics.queries.summary()
    assert (system.dropped, system.dropped_recorded, summary.runs) == (7, 7, 5)
