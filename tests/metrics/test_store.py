"""The metrics store on SQLite and PostgreSQL: upserts, out-of-order events, exact rollups,
retention; and the engine's migrations create exactly its tables."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from culm.metrics import events as m
from culm.metrics import tables
from culm.metrics.queries import MetricsQueries
from culm.metrics.store import MetricsStore
from culm.storage.sql import SqlStore
from tests.metrics.events import T0, at, run_events, usage


async def rows(store: MetricsStore, table: sa.Table) -> list[dict[str, Any]]:
    async with store.connect() as conn:
        return [dict(row._mapping) for row in await conn.execute(sa.select(table))]


async def test_the_migrations_create_the_metrics_tables(sql_store: SqlStore) -> None:
    def compare(connection: sa.Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, tables.metadata)

    async with sql_store.read_connection() as conn:
        diffs = await conn.run_sync(compare)
    ours = [d for d in diffs if "metrics_" in str(d)]
    assert ours == []


async def test_a_completion_whose_start_was_never_seen_is_recorded(
    metrics_store: MetricsStore, queries: MetricsQueries
) -> None:
    await metrics_store.write(
        [
            m.RoundCompleted(
                meta=at(T0, "run-1"),
                round_id="run-1:1:1",
                session_id="s1",
                status=m.RoundStatus.SUCCESS,
                usage=usage(40, 2),
                latency_ms=90,
                model="anthropic:claude",
            ),
            m.SessionCompleted(
                meta=at(T0, "run-1"), session_id="s1", status=m.SessionStatus.FAILED
            ),
            m.RequestCompleted(
                meta=at(T0),
                request_id="req-1",
                status_code=200,
                status=m.ForwardStatus.SUCCESS,
                usage=usage(7, 3),
                latency_ms=12,
            ),
        ]
    )
    summary = await queries.summary()
    assert (summary.runs, summary.runs_by_status.failed, summary.rounds) == (1, 1, 1)
    assert summary.tokens == usage(40, 2)
    models = {m.model: (m.runs, m.rounds) for m in (await queries.models()).models}
    assert models == {"anthropic:claude": (0, 1), "unknown": (1, 0)}  # the run's start had it
    forward = await queries.forward_summary()
    assert (forward.requests, forward.succeeded, forward.tokens) == (1, 1, usage(7, 3))


async def test_a_late_start_fills_in_without_undoing_the_completion(
    metrics_store: MetricsStore, queries: MetricsQueries
) -> None:
    done = run_events("run-1", "s1", rounds=[usage(10, 1)])
    starts = [e for e in done if e.type in ("session_started", "round_started")]
    await metrics_store.write([e for e in done if e not in starts])
    await metrics_store.write(starts)
    (session,) = await rows(metrics_store, tables.sessions)
    assert (session["status"], session["model"]) == ("completed", "openai:gpt-4o")
    assert session["started_at"] == T0
    (round_row,) = await rows(metrics_store, tables.rounds)
    assert (round_row["status"], round_row["started_at"]) == ("success", T0 + timedelta(seconds=1))
    assert (await queries.summary()).rounds == 1


async def test_writing_a_batch_twice_counts_it_once(
    metrics_store: MetricsStore, queries: MetricsQueries
) -> None:
    batch = run_events(
        "run-1", "s1", rounds=[usage(10, 1), usage(20, 2)], tools=[("grep", True, 5)]
    )
    await metrics_store.write(batch)
    await metrics_store.write(batch)
    summary = await queries.summary()
    assert (summary.rounds, summary.tool_calls, summary.runs) == (2, 1, 1)
    assert summary.tokens == usage(30, 3)
    assert len(await rows(metrics_store, tables.tool_calls)) == 1


@pytest.mark.parametrize(
    ("ended", "round_status", "failed"),
    [(m.SessionStatus.CANCELLED, "cancelled", 0), (m.SessionStatus.FAILED, "failed", 1)],
)
async def test_a_run_that_ends_closes_its_open_rounds(
    metrics_store: MetricsStore,
    queries: MetricsQueries,
    ended: m.SessionStatus,
    round_status: str,
    failed: int,
) -> None:
    """As failed, or as cancelled (not a failure) when the run was cancelled."""
    start = m.SessionStarted(meta=at(T0, "run-1"), session_id="s1", model="openai:gpt-4o")
    round_start = m.RoundStarted(
        meta=at(T0 + timedelta(seconds=1), "run-1"),
        round_id="run-1:1:1",
        session_id="s1",
        model="openai:gpt-4o",
    )
    await metrics_store.write([start, round_start])
    assert (await queries.summary()).active_sessions == 1
    end = m.SessionCompleted(
        meta=at(T0 + timedelta(seconds=3), "run-1"), session_id="s1", status=ended
    )
    await metrics_store.write([end])
    (round_row,) = await rows(metrics_store, tables.rounds)
    assert (round_row["status"], round_row["partial"], round_row["latency_ms"]) == (
        round_status,
        True,
        2000,
    )
    assert ended.value in round_row["error"]
    summary = await queries.summary()
    assert (summary.rounds, summary.failed_rounds, summary.partial_rounds) == (1, failed, 1)
    assert summary.active_sessions == 0


async def test_start_and_end_in_one_batch_close_the_round_too(
    metrics_store: MetricsStore, queries: MetricsQueries
) -> None:
    events = run_events("run-1", "s1", rounds=[usage(5, 1)])
    events.insert(
        -2,
        m.RoundStarted(
            meta=at(T0 + timedelta(seconds=5), "run-1"),
            round_id="run-1:1:2",
            session_id="s1",
            model="openai:gpt-4o",
        ),
    )
    await metrics_store.write(events)
    statuses = sorted(
        (r["round_id"], r["status"]) for r in await rows(metrics_store, tables.rounds)
    )
    assert statuses == [("run-1:1:1", "success"), ("run-1:1:2", "failed")]
    assert (await queries.summary()).rounds == 2


async def test_forward_request_start_and_completion_make_one_record(
    metrics_store: MetricsStore, queries: MetricsQueries
) -> None:
    started = m.RequestStarted(
        meta=at(T0, "trace-9"),
        request_id="req-1",
        endpoint="anthropic.messages",
        model="claude",
        is_stream=True,
    )
    completed = m.RequestCompleted(
        meta=at(T0 + timedelta(seconds=2)),
        request_id="req-1",
        status_code=529,
        status=m.ForwardStatus.ERROR,
        usage=None,
        latency_ms=2000,
        error="overloaded",
    )
    await metrics_store.write([started])
    await metrics_store.write([completed])
    (record,) = (await queries.forward_requests()).requests
    assert (record.endpoint, record.model, record.is_stream, record.trace_id) == (
        "anthropic.messages",
        "claude",
        True,
        "trace-9",
    )
    assert (record.status, record.status_code, record.usage, record.error) == (
        "error",
        529,
        None,
        "overloaded",
    )


async def test_system_events_are_stored(
    metrics_store: MetricsStore, queries: MetricsQueries
) -> None:
    await metrics_store.write(
        [
            m.WorkerStarted(),
            m.MetricsDropped(count=12, reason="queue_full"),
            m.MetricsDropped(count=3, reason="queue_full"),
            m.StorageError(error="locked", event_type="round_completed"),
            m.WorkerStopped(),
        ]
    )
    assert await queries.recorded_system_totals() == (15, 1)
    assert len(await rows(metrics_store, tables.system_events)) == 5


async def test_prune_deletes_what_is_older_than_the_cutoff(
    metrics_store: MetricsStore, queries: MetricsQueries
) -> None:
    old, recent = T0 - timedelta(days=100), T0
    await metrics_store.write(run_events("old", "s-old", when=old, tools=[("grep", True, 1)]))
    await metrics_store.write(run_events("new", "s-new", when=recent, tools=[("grep", True, 1)]))
    orphan = m.RoundStarted(
        meta=at(old, "ghost"), round_id="ghost:1:1", session_id="s-old", model="m"
    )
    await metrics_store.write([orphan])
    deleted = await metrics_store.prune((T0 - timedelta(days=90)).date())
    assert deleted > 0
    summary = await queries.summary()
    assert (summary.runs, summary.rounds, summary.tool_calls, summary.sessions) == (1, 1, 1, 1)
    assert {r["run_id"] for r in await rows(metrics_store, tables.rounds)} == {"new"}
    assert await metrics_store.prune((T0 - timedelta(days=90)).date()) == 0


async def test_open_runs_lists_runs_without_an_end(metrics_store: MetricsStore) -> None:
    await metrics_store.write(run_events("done", "s1"))
    await metrics_store.write([m.SessionStarted(meta=at(T0, "open"), session_id="s2", model="m")])
    assert await metrics_store.open_runs(started_before=T0 + timedelta(seconds=1)) == ["open"]
    assert await metrics_store.open_runs(started_before=T0) == []


async def test_the_runs_rollup_follows_each_runs_state(
    metrics_store: MetricsStore, queries: MetricsQueries
) -> None:
    async def counts() -> tuple[int, int, int, int]:
        c = (await queries.summary()).runs_by_status
        return c.running, c.completed, c.failed, c.cancelled

    start = m.SessionStarted(meta=at(T0, "run-1"), session_id="s1", model="m")
    await metrics_store.write([start])
    assert await counts() == (1, 0, 0, 0)
    end = m.SessionCompleted(
        meta=at(T0, "run-1"), session_id="s1", status=m.SessionStatus.COMPLETED
    )
    await metrics_store.write([end])
    await metrics_store.write([end])
    assert await counts() == (0, 1, 0, 0)
    late = m.SessionCompleted(meta=at(T0, "run-1"), session_id="s1", status=m.SessionStatus.FAILED)
    await metrics_store.write([late, start])
    assert await counts() == (0, 0, 1, 0)
    assert [(x.model, x.runs) for x in (await queries.models()).models] == [("m", 1)]


async def test_the_sqlite_fast_path_writes_what_sqlalchemy_would(
    sqlite_store: SqlStore,
) -> None:
    from datetime import UTC, date, datetime, timedelta, timezone

    from culm.storage.rowwriter import RowWriter

    when = datetime(2026, 11, 21, 8, 0, 0, 120, tzinfo=UTC)
    row = {
        "event_id": "e",
        "type": "storage_error",
        "occurred_at": when.astimezone(timezone(timedelta(hours=-5))),
        "day": date(2026, 11, 21),
        "count": None,
        "reason": None,
        "error": "x",
        "event_type": "tool_called",
    }
    table = tables.system_events

    def transaction(conn: sa.Connection) -> None:
        RowWriter("sqlite").execute(conn, sa.insert(table), [row])
        conn.execute(sa.insert(table), [{**row, "event_id": "f"}])

    await sqlite_store.write(transaction)
    async with sqlite_store.read_connection() as conn:
        raw = (
            await conn.exec_driver_sql(
                "SELECT event_id, occurred_at, day FROM metrics_system_events ORDER BY event_id"
            )
        ).all()
        typed = (await conn.execute(sa.select(table.c.occurred_at))).scalars().all()
    assert raw[0][1:] == raw[1][1:] == ("2026-11-21 08:00:00.000120", "2026-11-21")
    assert typed == [when, when]


async def test_every_batch_writes_the_rows_it_locks_in_key_order(
    metrics_store: MetricsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes' batches adding to the same daily rollup rows (or runs, rounds) in
    opposite orders deadlock on PostgreSQL; written in key order, one waits for the other."""
    written: list[tuple[Any, list[dict[str, Any]]]] = []
    execute = metrics_store._rows.execute

    def recording(conn: sa.Connection, statement: Any, rows: Any) -> Any:
        written.append((statement, list(rows)))
        return execute(conn, statement, rows)

    monkeypatch.setattr(metrics_store._rows, "execute", recording)
    events: list[m.MetricsEvent] = []
    for i, model in enumerate(["z:last", "m:middle", "a:first"]):
        tools = [(f"tool-{9 - i}", True, 5), (f"tool-{i}", False, 7)]
        events += run_events(f"run-{9 - i}", f"s{i}", model=model, tools=tools)
    await metrics_store.write(events)

    def keys(table: sa.Table, *columns: str) -> list[tuple[Any, ...]]:
        statement = metrics_store._sql.increments[table.name]
        [rows] = [rows for written_to, rows in written if written_to is statement]
        return [tuple(row[column] for column in columns) for row in rows]

    for table, columns in (
        (tables.daily_runs, ("day", "model", "status")),
        (tables.daily_models, ("day", "model")),
        (tables.daily_tools, ("day", "tool_name")),
    ):
        found = keys(table, *columns)
        assert len(found) >= 3 and found == sorted(found), (table.name, found)
    [sessions] = [rows for statement, rows in written if statement is metrics_store._sql.sessions]
    assert [row["run_id"] for row in sessions] == ["run-7", "run-8", "run-9"]
