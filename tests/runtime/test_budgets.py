"""Spend: cost on rounds, runs and every metrics query; budgets end a run after the round that
crossed them (``budget_exceeded``), sub-agents' spend counting toward their parent's."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import culm
from tests.support import collect, settings

# USD per million tokens: input 2, output 10 → a 100-in / 10-out round costs $0.0003.
PRICE = {"price": {"input": 2.0, "output": 10.0}}
ROUND_COST = (100 * 2.0 + 10 * 10.0) / 1_000_000


def _engine(tmp_path: Path, **overrides: Any) -> culm.Engine:
    models = {"scripted:looper": PRICE, "scripted:helper": PRICE}
    return culm.Engine(settings(tmp_path, models=models, **overrides))


def _round(*steps: dict[str, Any]) -> list[dict[str, Any]]:
    usage = {"usage": {"prompt_tokens": 100, "completion_tokens": 10}}  # 110 tokens
    return [*steps, usage]


def _looper(engine: culm.Engine, rounds: int) -> None:
    call = {"tool_call": {"name": "list_dir", "arguments": {"path": "."}}}
    turns = [_round(call) for _ in range(rounds)] + [_round({"text": "done"})]
    engine.scripts.register("looper", {"turns": turns})


async def test_rounds_and_runs_carry_their_cost_and_metrics_add_it_up(tmp_path: Path) -> None:
    async with _engine(tmp_path) as engine:
        _looper(engine, 2)
        run = await engine.run("go", model="scripted:looper", tools=["list_dir"])
        events = await collect(engine.subscribe(run.run_id))
        rounds = [e for e in events if e.type == "round_completed"]
        assert [e.cost_usd for e in rounds] == [pytest.approx(ROUND_COST)] * 3  # type: ignore[union-attr]
        ended = await engine.get_run(run.run_id, descendants_cost=True)
        assert ended.cost_usd == pytest.approx(3 * ROUND_COST)
        assert ended.cost_usd_with_descendants == pytest.approx(3 * ROUND_COST)
        demo = await engine.run("hi", model="scripted:demo")  # no price: null, never 0
        await engine.wait(demo.run_id, timeout=20)
        assert (await engine.get_run(demo.run_id)).cost_usd is None
        await engine.metrics.flush()
        queries = engine.metrics.queries
        models = {m.model: m for m in (await queries.models()).models}
        assert models["scripted:looper"].cost_usd == pytest.approx(3 * ROUND_COST)
        assert models["scripted:demo"].cost_usd is None
        summary = await queries.summary()
        assert summary.cost_usd is None
        assert summary.unpriced_models == ["scripted:demo"]
        sessions = {s.session_id: s for s in (await queries.sessions()).sessions}
        assert sessions[run.session_id].cost_usd == pytest.approx(3 * ROUND_COST)
        assert sessions[demo.session_id].cost_usd is None
        detail = await queries.session(run.session_id)
        assert detail is not None
        assert detail.cost_usd == pytest.approx(3 * ROUND_COST)
        assert [r.cost_usd for r in detail.rounds] == [pytest.approx(ROUND_COST)] * 3
        (period,) = (await queries.daily(days=1)).periods
        assert period.cost_usd is None  # the unpriced model's rounds are in it
        by_model = {m.model: m.cost_usd for m in period.models}
        assert by_model["scripted:looper"] == pytest.approx(3 * ROUND_COST)


@pytest.mark.parametrize(
    ("budget", "stopped_after"),
    [
        ({"max_tokens": 219}, 2),  # 110 per round: the 2nd round takes it to 220
        ({"max_tokens": 220}, 3),  # at the limit is not past it
        ({"max_cost_usd": 2.5 * ROUND_COST}, 3),
    ],
)
async def test_a_budget_ends_the_run_after_the_round_that_crossed_it(
    tmp_path: Path, budget: dict[str, Any], stopped_after: int
) -> None:
    async with _engine(tmp_path) as engine:
        _looper(engine, 10)
        session = await engine.create_session(model="scripted:looper", tools=["list_dir"])
        run = await engine.start_run(session.session_id, "go", **budget)
        events = await collect(engine.subscribe(run.run_id))
        ended = await engine.get_run(run.run_id)
        assert ended.status is culm.RunStatus.ERROR
        assert events[-1].type == "error"
        assert events[-1].code == "budget_exceeded"  # type: ignore[union-attr]
        assert ended.round_count == stopped_after
        assert ended.usage.total_tokens == 110 * stopped_after  # the crossing round counted
        tool_results = [e for e in events if e.type == "tool_complete"]
        assert len(tool_results) == stopped_after  # the crossing round ran to its end
        budgets = [e.usage for e in events if e.type == "token_budget_updated"]  # type: ignore[union-attr]
        last = budgets[-1]
        assert last.spent_tokens == 110 * stopped_after
        assert (last.max_tokens, last.max_cost_usd) == (
            budget.get("max_tokens"),
            budget.get("max_cost_usd"),
        )


async def test_the_sessions_budget_applies_and_a_final_answer_still_completes(
    tmp_path: Path,
) -> None:
    async with _engine(tmp_path) as engine:
        _looper(engine, 1)  # 2 rounds: a tool call, then the answer
        session = await engine.create_session(
            model="scripted:looper", tools=["list_dir"], max_tokens=100
        )
        assert (await engine.get_session(session.session_id)).max_tokens == 100
        run = await engine.start_run(session.session_id, "go")
        assert (await engine.wait(run.run_id, timeout=20)).status is culm.RunStatus.ERROR
        # A run's own budget wins over the session's: the answer round crosses it, and the run
        # completes (its answer is there; nothing more would be spent).
        _looper(engine, 1)
        again = await engine.start_run(session.session_id, "go", max_tokens=200)
        ended = await engine.wait(again.run_id, timeout=20)
        assert ended.status is culm.RunStatus.COMPLETED
        assert ended.usage.total_tokens == 220


async def test_a_sub_agents_spend_counts_toward_its_parents_budget(tmp_path: Path) -> None:
    async with _engine(tmp_path) as engine:
        engine.scripts.register(
            "helper",
            {
                "turns": [
                    [{"text": "done"}, {"usage": {"prompt_tokens": 1000, "completion_tokens": 0}}]
                ]
            },
        )
        spawn = {
            "tool_call": {
                "name": "spawn_agent",
                "arguments": {"task": "t", "model": "scripted:helper"},
            }
        }
        engine.scripts.register("looper", {"turns": [_round(spawn), _round({"text": "x"})]})
        session = await engine.create_session(model="scripted:looper", tools=["spawn_agent"])
        run = await engine.start_run(session.session_id, "go", max_tokens=500)
        events = await collect(engine.subscribe(run.run_id))
        assert events[-1].code == "budget_exceeded"  # type: ignore[union-attr]
        ended = await engine.get_run(run.run_id, descendants_cost=True)
        assert ended.round_count == 1  # its own 110 tokens plus the child's 1000
        assert ended.cost_usd_with_descendants == pytest.approx(ROUND_COST + 1000 * 2.0 / 1e6)


async def test_the_agents_report_prices_each_agents_tokens(tmp_path: Path) -> None:
    agents = {"priced": {"model": "scripted:looper"}, "free": {"model": "scripted:demo"}}
    async with _engine(tmp_path, agents=agents) as engine:
        _looper(engine, 1)
        for agent in ("priced", "free"):
            run = await engine.run("go", agent=agent, tools=["list_dir"])
            await engine.wait(run.run_id, timeout=20)
        async with asyncio.timeout(20):  # the metrics worker writes behind the runs
            while True:
                report = {row.agent: row for row in (await engine.metrics.queries.agents()).agents}
                if len(report) == 2 and all(row.rounds for row in report.values()):
                    break
                await asyncio.sleep(0.05)
    assert report["priced"].cost_usd == pytest.approx(2 * ROUND_COST)
    assert report["free"].cost_usd is None  # scripted:demo has no price: unknown, never 0


async def test_what_a_run_spent_before_it_waited_counts_toward_its_budget(tmp_path: Path) -> None:
    async with _engine(tmp_path, heartbeat_seconds=0.1) as engine:
        ask = {"tool_call": {"name": "list_dir", "arguments": {"path": "."}}}
        free = {"tool_call": {"name": "glob", "arguments": {"pattern": "*"}}}
        turns = [_round(ask), _round(free), _round({"text": "done"})]
        engine.scripts.register("looper", {"turns": turns})
        session = await engine.create_session(
            model="scripted:looper", tools=["list_dir", "glob"], require_approval=["list_dir"]
        )
        run = await engine.start_run(session.session_id, "go", max_tokens=200)
        async with asyncio.timeout(20):  # 110 tokens spent, then it waits for the approval
            while not (pending := await engine.pending_input(run.run_id)):
                await asyncio.sleep(0.02)
        await engine.respond(run.run_id, pending[0].request_id, approve=True)
        ended = await engine.wait(run.run_id, timeout=20)
    assert ended.status is culm.RunStatus.ERROR  # 220 > 200 after the second round
    assert ended.error is not None and "max_tokens" in ended.error
    assert ended.round_count == 2 and ended.usage.total_tokens == 220


async def test_what_sub_agents_spent_before_their_parent_waited_counts_after_it_resumes(
    tmp_path: Path,
) -> None:
    async with _engine(tmp_path, heartbeat_seconds=0.1) as engine:
        engine.scripts.register("helper", {"turns": [_round({"text": "helped"})]})
        spawn = {
            "tool_call": {
                "name": "spawn_agent",
                "arguments": {"task": "t", "model": "scripted:helper"},
            }
        }
        ask = {"tool_call": {"name": "list_dir", "arguments": {"path": "."}}}
        free = {"tool_call": {"name": "glob", "arguments": {"pattern": "*"}}}
        turns = [_round(spawn), _round(ask), _round(free), _round({"text": "done"})]
        engine.scripts.register("looper", {"turns": turns})
        session = await engine.create_session(
            model="scripted:looper",
            tools=["spawn_agent", "list_dir", "glob"],
            require_approval=["list_dir"],
        )
        # Before the wait: its 2 rounds (220 tokens) and the helper's round (110): 330.
        run = await engine.start_run(session.session_id, "go", max_tokens=400)
        async with asyncio.timeout(20):
            while not (pending := await engine.pending_input(run.run_id)):
                await asyncio.sleep(0.02)
        await engine.respond(run.run_id, pending[0].request_id, approve=True)
        ended = await engine.wait(run.run_id, timeout=20)
    assert ended.status is culm.RunStatus.ERROR and "max_tokens" in (ended.error or "")
    assert ended.round_count == 3  # 330 + 110 > 400: the helper's 110 counted after the wait
