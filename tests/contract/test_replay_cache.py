"""The session replay cache: the last 32 critical events and the last ``token_budget_updated``.

The contract (docs/ARCHITECTURE.md, "Late and reconnecting subscribers"): without a cursor, a
session stream starts with the runner's replay cache — the last ≤ 32 critical events (oldest
evicted) and the last ``token_budget_updated`` — then live events. A session whose run has
finished replays the same from the store. The 32 is the contract's, written here as a literal.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

import culm
from culm.domain.events import RunEvent, SubAgentStarted, Token, TokenBudget, TokenBudgetUpdated
from culm.runtime.runner import Runner
from tests.contract.gate import held_run
from tests.support import settings as engine_settings

CRITICAL = 32  # docs/ARCHITECTURE.md: "the last ≤ 32 critical events"
SPAWNED = 40  # more sub_agent_started events than the cache holds
BUDGETS = 5


async def _cache_until(
    stream: AsyncGenerator[RunEvent], is_marker: Callable[[RunEvent], bool]
) -> list[RunEvent]:
    """What the stream gives before the first event ``is_marker`` accepts."""
    cached: list[RunEvent] = []
    async with asyncio.timeout(20):
        async for event in stream:
            if is_marker(event):
                return cached
            cached.append(event)
    raise AssertionError("the stream ended")


def _emit_history(runner: Runner) -> None:
    for i in range(SPAWNED):
        runner.emit(SubAgentStarted(child_session_id=f"s{i}", child_run_id=f"r{i}"))
        if i % (SPAWNED // BUDGETS) == 0:
            budget = TokenBudget(prompt_tokens=1000 + i, max_context_tokens=8000)
            runner.emit(TokenBudgetUpdated(usage=budget))


async def test_a_live_runs_cache_is_the_last_32_critical_events_and_the_last_budget(
    tmp_path: Path,
) -> None:
    async with held_run(engine_settings(tmp_path)) as (engine, run, runner, gate):
        _emit_history(runner)
        await engine.batcher.flush()
        stream = engine.subscribe_session(run.session_id)
        async with contextlib.aclosing(stream):
            first = await anext(stream)  # subscribed now: what follows the cache is live
            runner.emit(Token(content="live marker"))
            await engine.batcher.flush()
            rest = await _cache_until(stream, lambda e: e.type == "token")
        gate.release.set()
        await engine.wait(run.run_id)
    cached = [first, *rest]
    critical = [e for e in cached if e.type != "token_budget_updated"]
    assert len(critical) == CRITICAL
    assert [e.child_session_id for e in critical] == [  # type: ignore[union-attr]
        f"s{i}" for i in range(SPAWNED - CRITICAL, SPAWNED)
    ]
    budgets = [e for e in cached if e.type == "token_budget_updated"]
    assert [b.usage.prompt_tokens for b in budgets] == [1000 + 32]
    assert [e.seq for e in cached] == sorted(e.seq for e in cached)


async def test_a_finished_runs_cache_comes_from_the_store_with_the_same_rules(
    tmp_path: Path,
) -> None:
    async with held_run(engine_settings(tmp_path)) as (engine, run, runner, gate):
        _emit_history(runner)
        gate.release.set()
        await engine.wait(run.run_id)
        stream = engine.subscribe_session(run.session_id)
        async with contextlib.aclosing(stream):
            first = await anext(stream)
            second = await engine.start_run(run.session_id, "again")  # its events are live
            rest = await _cache_until(stream, lambda e: e.run_id == second.run_id)
        await engine.wait(second.run_id)
        budget_seqs = [e.seq for e in await _all_budgets(engine, run.run_id)]
    cached = [first, *rest]
    assert {e.run_id for e in cached} == {run.run_id}
    critical = [e for e in cached if e.type != "token_budget_updated"]
    assert len(critical) == CRITICAL
    # execution_started, s0 … s39, complete: the newest 32 are s9 … s39 and complete.
    assert [e.type for e in critical][-1] == "complete"
    assert [e.child_session_id for e in critical[:-1]] == [  # type: ignore[union-attr]
        f"s{i}" for i in range(SPAWNED - CRITICAL + 1, SPAWNED)
    ]
    budgets = [e for e in cached if e.type == "token_budget_updated"]
    assert len(budgets) == 1
    assert budgets[0].seq == max(budget_seqs)


async def _all_budgets(engine: culm.Engine, run_id: str) -> list[RunEvent]:
    events = [e async for e in engine.subscribe(run_id)]
    return [e for e in events if e.type == "token_budget_updated"]
