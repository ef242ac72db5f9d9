"""The metrics store's token totals equal what the provider reported, exactly.

200 seeded random runs go through a real Engine against the local fake upstream (real HTTP, both
wire formats): tool calls (ok, failing, unknown), 429 and 500 retries, streams cut or failing
before any output (retried; a reported usage still counts) and after it (the run fails with a
partial round), retries exhausted, fatal 400s, and runs cancelled mid-stream. The expected totals
come from what the fake actually served, per reply; they must equal the store's per round, per
model, overall and per run (``Run.usage``), with nothing dropped.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, ClassVar

import sqlalchemy as sa

import culm
from culm.domain.events import RunEvent
from culm.domain.models import Usage
from culm.metrics import tables
from culm.tools.base import Tool, ToolContext
from tests.metrics.scenarios import MARKER, Plan, RoutedUpstream, make_plan
from tests.support import FailingTool

RUNS = 200
CONCURRENCY = 16
SEED = 20261121


class ProbeTool(Tool):
    name: ClassVar[str] = "probe"
    description: ClassVar[str] = "Answers ok."
    parameters: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        return "ok"


def _settings(upstream: RoutedUpstream, home: Path) -> culm.Settings:
    return culm.Settings(
        home=home,
        openai_api_key="sk-test",
        openai_base_url=f"{upstream.url}/v1",
        anthropic_api_key="ak-test",
        anthropic_base_url=upstream.url,
        model_retry_base_delay=0,
        metrics_flush_interval=0.05,
    )


async def _drive(engine: culm.Engine, plan: Plan) -> culm.Run:
    run = await engine.run(plan.key, model=plan.model, tools=["probe", "explode"])
    if plan.cancel:
        async for event in engine.subscribe(run.run_id):
            if _is_marker(event):
                await engine.cancel(run.run_id)
    return await engine.wait(run.run_id, timeout=30)


def _is_marker(event: RunEvent) -> bool:
    return event.type == "token" and event.content == MARKER


async def _run_all(engine: culm.Engine, plans: list[Plan]) -> dict[str, culm.Run]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(plan: Plan) -> tuple[str, culm.Run]:
        async with gate:
            return plan.key, await _drive(engine, plan)

    async with asyncio.timeout(45):
        return dict(await asyncio.gather(*(one(plan) for plan in plans)))


async def test_stored_token_totals_equal_the_providers_exactly(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    plans = [make_plan(rng, index) for index in range(RUNS)]
    async with RoutedUpstream() as upstream:
        for plan in plans:
            upstream.add(plan)
        tools = [ProbeTool(), FailingTool()]
        async with culm.Engine(_settings(upstream, tmp_path), tools=tools) as engine:
            runs = await _run_all(engine, plans)
            await engine.metrics.flush()
            summary = await engine.metrics.queries.summary()
            models = await engine.metrics.queries.models()
            system = await engine.metrics.system()
            round_rows = await _round_rows(engine)

    expected_by_run = {
        plan.key: sum((s.usage for s in upstream.served[plan.key]), Usage()) for plan in plans
    }
    expected_by_model: defaultdict[str, Usage] = defaultdict(Usage)
    for plan in plans:
        expected_by_model[plan.model] += expected_by_run[plan.key]
    expected_total = sum(expected_by_model.values(), Usage())

    assert system.dropped == 0 and system.storage_errors == 0
    assert summary.tokens == expected_total
    assert {m.model: m.tokens for m in models.models} == dict(expected_by_model)
    assert sum((usage for usage, _, _ in round_rows), Usage()) == expected_total
    for plan in plans:
        assert runs[plan.key].usage == expected_by_run[plan.key], (plan.kinds, plan.key)
    _assert_the_mix_was_exercised(plans, runs, round_rows, summary)


def _assert_the_mix_was_exercised(
    plans: list[Plan],
    runs: dict[str, culm.Run],
    round_rows: list[tuple[Usage, bool, str]],
    summary: Any,
) -> None:
    """The seed must hit every path the test is about, or the exactness above proves little."""
    kinds = Counter(kind for plan in plans for kind in plan.kinds)
    for kind in ("tools", "429", "500", "cut_before_output", "error_before_output"):
        assert kinds[kind] >= 5, kinds
    statuses = Counter(run.status.value for run in runs.values())
    assert statuses["completed"] >= 40 and statuses["cancelled"] >= 15
    assert statuses["error"] >= 40, statuses
    partial_with_usage = [u for u, partial, _ in round_rows if partial and u.total_tokens]
    assert len(partial_with_usage) >= 20
    assert summary.runs == RUNS
    assert summary.runs_by_status.cancelled == statuses["cancelled"]
    assert summary.runs_by_status.failed == statuses["error"]


async def _round_rows(engine: culm.Engine) -> list[tuple[Usage, bool, str]]:
    columns = [tables.rounds.c[kind] for kind in tables.USAGE_KINDS]
    query = sa.select(*columns, tables.rounds.c.partial, tables.rounds.c.status)
    async with engine.store.read_connection() as conn:
        rows = (await conn.execute(query)).all()
    return [
        (Usage(**dict(zip(tables.USAGE_KINDS, row[:6], strict=True))), row[6], row[7])
        for row in rows
    ]
