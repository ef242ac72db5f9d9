"""Metrics pipeline: sustained ingest into SQLite, and query latency over a million rounds.

Two scenarios, each on a fresh SQLite database (WAL, the engine's migrations) in a temporary
directory:

* ``ingest``: a producer emits ``--events`` chat events (runs of 4 rounds, each round with a tool
  call: ``session_started``, ``round_started``, ``round_completed``, ``tool_called`` …
  ``message_count_updated``, ``session_completed``) into the pipeline as the engine wires it
  (bounded bus → batching worker → store). The producer builds every event as it goes (as the run
  observer does) and yields to the loop after every 64 runs, waiting while the queue could not take the next
  64, so the figure is what the worker sustains without dropping anything. Reports events/s from the first emit until
  everything is stored, then checks that nothing was dropped and that the store holds every
  round and tool call.
* ``queries``: loads ``--rounds`` rounds (same shape, spread over the last 90 days, 4 models,
  5 tools, ~2.5 runs per session) through the store's batch writer, then times the summary
  (all time, and the last 30 days), the daily report (30 days by day, 13 weeks by week, 12
  months by month), models and tools, ``--repeat`` times each. Reports p50 and max per query.

Run it from the repository root::

    .venv/bin/python bench/metrics_ingest.py                  # both, ~2 min
    .venv/bin/python bench/metrics_ingest.py --only ingest --events 200000 --json

Missed targets print MISS but exit 0; the exit status is 1 only when something is wrong (an
event dropped, a record missing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from culm.domain.models import Usage
from culm.metrics import events as m
from culm.metrics import tables
from culm.metrics.pipeline import MetricsConfig, MetricsPipeline
from culm.metrics.reports import Granularity
from culm.metrics.store import MetricsStore
from culm.storage.sql import SqlStore

INGEST_TARGET = 50_000  # events/s, zero drops
QUERY_TARGET_MS = 200.0
ROUNDS_PER_RUN = 4
MODELS = (
    "openai:gpt-4o",
    "openai:gpt-4o-mini",
    "anthropic:claude-sonnet-4-5",
    "anthropic:claude-haiku-4-5",
)
TOOLS = ("read_file", "grep", "bash", "glob", "edit_file")
EVENTS_PER_RUN = 3 + ROUNDS_PER_RUN * 3
CHUNK_RUNS = 8  # the producer yields to the loop after each chunk of runs

Result = dict[str, Any]


def run_events(n: int, when: datetime) -> Iterator[m.MetricsEvent]:
    """One run's events: 4 rounds, a tool call in each."""
    run_id, session_id = f"run-{n:09d}", f"session-{n * 2 // 5:09d}"
    model = MODELS[n % len(MODELS)]

    def meta(offset_ms: int) -> m.EventMeta:
        return m.EventMeta(occurred_at=when + timedelta(milliseconds=offset_ms), trace_id=run_id)

    yield m.SessionStarted(meta=meta(0), session_id=session_id, model=model)
    for r in range(1, ROUNDS_PER_RUN + 1):
        round_id = f"{run_id}:1:{r}"
        base = r * 1000
        prompt, completion = 1000 + 37 * (n % 50) + 500 * r, 50 + n % 200
        usage = Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            cache_read_tokens=prompt // 2,
            reasoning_tokens=completion // 4,
        )
        yield m.RoundStarted(meta=meta(base), round_id=round_id, session_id=session_id, model=model)
        yield m.RoundCompleted(
            meta=meta(base + 400),
            round_id=round_id,
            session_id=session_id,
            status=m.RoundStatus.SUCCESS if (n + r) % 40 else m.RoundStatus.FAILED,
            usage=usage,
            latency_ms=400 + n % 300,
            model=model,
        )
        yield m.ToolCalled(
            meta=meta(base + 500),
            tool_call_id=f"call_{r}",
            round_id=round_id,
            session_id=session_id,
            tool_name=TOOLS[(n + r) % len(TOOLS)],
            latency_ms=(n * 7 + r * 13) % 900,
            success=(n + r) % 17 != 0,
        )
    end = meta(ROUNDS_PER_RUN * 1000 + 600)
    yield m.MessageCountUpdated(
        meta=end, session_id=session_id, message_count=2 + 3 * ROUNDS_PER_RUN
    )
    yield m.SessionCompleted(meta=end, session_id=session_id, status=m.SessionStatus.COMPLETED)


@contextlib.asynccontextmanager
async def sqlite_store(directory: Path) -> Any:
    store = SqlStore(f"sqlite+aiosqlite:///{directory / 'culm.db'}")
    await store.start()
    try:
        yield (
            store,
            MetricsStore(store.write, store.read_connection, store.dialect.name),
        )
    finally:
        await store.aclose()


async def count(store: SqlStore, table: sa.Table) -> int:
    async with store.read_connection() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


# Ingest


async def ingest(args: argparse.Namespace, directory: Path) -> Result:
    runs = max(1, args.events // EVENTS_PER_RUN)
    config = MetricsConfig(queue_size=args.queue_size, batch_size=args.batch_size)
    async with (
        sqlite_store(directory) as (store, metrics_store),
        contextlib.AsyncExitStack() as stack,
    ):
        pipeline = MetricsPipeline(config)
        await pipeline.start(metrics_store, stack, model_of=lambda run_id: None)
        now = datetime.now(UTC)
        started = time.perf_counter()
        emitted = 0
        for n in range(runs):
            for event in run_events(n, now):
                pipeline.emit(event)
                emitted += 1
            if n % CHUNK_RUNS == 0:
                await _yield_while_full(pipeline, args.queue_size - CHUNK_RUNS * EVENTS_PER_RUN)
        await pipeline.flush()
        elapsed = time.perf_counter() - started
        system = await pipeline.system()
        stored_rounds = await count(store, tables.rounds)
        stored_tools = await count(store, tables.tool_calls)
    ok = system.dropped == 0 and stored_rounds == runs * ROUNDS_PER_RUN == stored_tools
    rate = emitted / elapsed
    return {
        "events": emitted,
        "seconds": round(elapsed, 2),
        "events_per_second": round(rate),
        "dropped": system.dropped,
        "batches": system.worker.batches,
        "target": INGEST_TARGET,
        "met": rate >= INGEST_TARGET and system.dropped == 0,
        "ok": ok,
    }


async def _yield_while_full(pipeline: MetricsPipeline, room: int) -> None:
    """Let the worker run; wait while the next chunk of runs might not fit in the queue."""
    await asyncio.sleep(0)
    while pipeline.live().queue_depth > room:
        await asyncio.sleep(0.001)


# Queries


async def load(metrics_store: MetricsStore, rounds: int, chunk_runs: int = 2000) -> None:
    runs = rounds // ROUNDS_PER_RUN
    now = datetime.now(UTC)
    span = timedelta(days=90).total_seconds()
    for first in range(0, runs, chunk_runs):
        batch: list[m.MetricsEvent] = []
        for n in range(first, min(first + chunk_runs, runs)):
            when = now - timedelta(seconds=span * (1 - n / runs))
            batch.extend(run_events(n, when))
        await metrics_store.write(batch)
        if first // chunk_runs % 25 == 0:
            print(
                f"  loaded {min(first + chunk_runs, runs) * ROUNDS_PER_RUN:,} rounds",
                file=sys.stderr,
            )


async def queries(args: argparse.Namespace, directory: Path) -> Result:
    async with (
        sqlite_store(directory) as (store, metrics_store),
        contextlib.AsyncExitStack() as stack,
    ):
        started = time.perf_counter()
        await load(metrics_store, args.rounds)
        load_seconds = time.perf_counter() - started
        pipeline = MetricsPipeline()
        await pipeline.start(metrics_store, stack, model_of=lambda run_id: None)
        q = pipeline.queries
        today = datetime.now(UTC).date()
        cases: dict[str, Callable[[], Awaitable[Any]]] = {
            "summary (all)": lambda: q.summary(),
            "summary (30 days)": lambda: q.summary(today - timedelta(days=29), today),
            "daily (30 days by day)": lambda: q.daily(30, Granularity.DAY),
            "daily (13 weeks by week)": lambda: q.daily(91, Granularity.WEEK),
            "daily (12 months by month)": lambda: q.daily(365, Granularity.MONTH),
            "models (all)": lambda: q.models(),
            "tools (30 days)": lambda: q.tools(today - timedelta(days=29), today),
        }
        timings = {name: await _time(case, args.repeat) for name, case in cases.items()}
        summary = await q.summary()
        stored_rounds = await count(store, tables.rounds)
    gated = [name for name in timings if name.startswith(("summary", "daily"))]
    return {
        "rounds": stored_rounds,
        "load_seconds": round(load_seconds, 1),
        "queries_ms": timings,
        "target_ms": QUERY_TARGET_MS,
        "met": all(timings[name]["max"] < QUERY_TARGET_MS for name in gated),
        "ok": summary.rounds == stored_rounds == (args.rounds // ROUNDS_PER_RUN) * ROUNDS_PER_RUN,
    }


async def _time(case: Callable[[], Awaitable[Any]], repeat: int) -> dict[str, float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await case()
        samples.append((time.perf_counter() - started) * 1000)
    return {"p50": round(statistics.median(samples), 1), "max": round(max(samples), 1)}


# Main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("ingest", "queries"))
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--queue-size", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: Result = {"python": platform.python_version(), "machine": platform.machine()}
    for name, scenario in (("ingest", ingest), ("queries", queries)):
        if args.only in (None, name):
            with tempfile.TemporaryDirectory() as directory:
                results[name] = asyncio.run(scenario(args, Path(directory)))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _report(results)
    return 0 if all(results[k]["ok"] for k in ("ingest", "queries") if k in results) else 1


def _report(results: Result) -> None:
    if "ingest" in results:
        r = results["ingest"]
        mark = "ok" if r["met"] else "MISS"
        print(
            f"ingest: {r['events']:,} events in {r['seconds']} s = {r['events_per_second']:,}/s,"
            f" {r['dropped']} dropped, {r['batches']} batches  [{mark}: >= {r['target']:,}/s]"
        )
    if "queries" in results:
        r = results["queries"]
        print(f"queries over {r['rounds']:,} rounds (loaded in {r['load_seconds']} s):")
        for name, t in r["queries_ms"].items():
            print(f"  {name:<28} p50 {t['p50']:>7.1f} ms   max {t['max']:>7.1f} ms")
        print(f"  [{'ok' if r['met'] else 'MISS'}: summary and daily < {r['target_ms']:.0f} ms]")


if __name__ == "__main__":
    sys.exit(main())
