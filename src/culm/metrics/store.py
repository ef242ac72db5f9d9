"""The metrics store: writes batches of metrics events into the engine's database.

It shares the engine's database (through ``SqlStore.write`` / ``read_connection``) and
its migrations (revision ``0002`` creates the tables). One batch is one transaction: rows are
upserted (so a completion whose start was never seen is still recorded, and a start arriving
later fills it in), and the daily rollups move only with records completed for the first time
(or runs changing state), so they stay exact even if a batch is written twice. The SQL is
portable; the one dialect-specific piece is ``INSERT … ON CONFLICT``, which SQLite and
PostgreSQL spell the same way. The statements are built once; rows go through a
:class:`~culm.storage.rowwriter.RowWriter`. Every process writes the rows it locks in key order
(runs, rounds, and the few daily rollup rows every batch adds to), so two processes' batches
wait for each other instead of deadlocking.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import date, datetime
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from culm.metrics import tables as t
from culm.metrics.batch import Batch, Change, Row, change, fold, merge_run
from culm.metrics.events import MetricsEvent
from culm.metrics.statements import Statements
from culm.storage.rowwriter import RowWriter

T = TypeVar("T")
Connect = Callable[[], AbstractAsyncContextManager[AsyncConnection]]


class Write(Protocol):
    """Runs ``fn(conn)`` as one write transaction and returns what it returns."""

    def __call__(self, fn: Callable[[sa.Connection], T], /) -> Awaitable[T]: ...


UNKNOWN_MODEL = "unknown"

# Ids per ``IN (…)`` list: well under SQLite's and asyncpg's bound-parameter limits.
CHUNK = 500


class MetricsStore:
    """``write`` runs a write transaction and ``read`` opens a read connection on the engine's
    database (``SqlStore.write`` / ``read_connection``: SQLite's writes stay serialized with the
    engine's own); ``dialect`` is ``sqlite`` or ``postgresql``."""

    def __init__(self, write: Write, read: Connect, dialect: str) -> None:
        self.transaction = write
        self.connect = read
        self._rows = RowWriter(dialect)
        self._sql = Statements(postgresql.insert if dialect == "postgresql" else sqlite.insert)

    async def write(self, events: Sequence[MetricsEvent]) -> None:
        """Store ``events`` in one transaction."""
        await self.write_changes([change(event) for event in events])

    async def write_changes(self, changes: Sequence[Change]) -> None:
        """Store the changes of a batch of events (see :mod:`culm.metrics.batch`), in one
        transaction."""
        batch = fold(changes)

        def transaction(conn: sa.Connection) -> None:
            self._write_sessions(conn, batch)
            self._write_rounds(conn, batch)
            self._write_tool_calls(conn, batch)
            self._write_forward(conn, batch)
            self._rows.execute(conn, self._sql.system, batch.system)

        await self.transaction(transaction)

    # Sessions (one row per run)

    def _write_sessions(self, conn: sa.Connection, batch: Batch) -> None:
        """Merge the batch's run rows into the stored ones (in Python, so the rollup of runs
        by day, model and status moves with each row's state exactly)."""
        if not batch.sessions:
            return
        c = t.sessions.c
        stored = _select_in(conn, list(c), c.run_id, sorted(batch.sessions), lock=True)
        rows: list[Row] = []
        counts: Counter[tuple[date, str, str]] = Counter()
        for key, new in sorted(batch.sessions.items()):
            old = stored.get(key)
            row = new if old is None else merge_run(old._mapping, new)
            if old is not None:
                counts[(old.day, old.model or UNKNOWN_MODEL, old.status)] -= 1
            counts[(row["day"], row["model"] or UNKNOWN_MODEL, row["status"])] += 1
            rows.append(row)
        self._rows.execute(conn, self._sql.sessions, rows)
        changed = [
            {"day": day, "model": model, "status": status, "runs": runs}
            for (day, model, status), runs in sorted(counts.items())
            if runs
        ]
        self._rows.execute(conn, self._sql.increments[t.daily_runs.name], changed)

    # Rounds

    def _write_rounds(self, conn: sa.Connection, batch: Batch) -> None:
        self._close_open_rounds(conn, batch)
        starts = [{**row, "status": "running"} for row in batch.round_starts.values()]
        self._rows.execute(conn, self._sql.round_starts, starts)
        if not batch.round_ends:
            return
        r = t.rounds.c
        known = _select_in(
            conn,
            [r.round_id, r.completed_at, r.model, r.started_at],
            r.round_id,
            sorted(batch.round_ends),
            lock=True,
        )
        ends: list[Row] = []
        for round_id, row in sorted(batch.round_ends.items()):
            existing = known.get(round_id)
            if existing is not None and existing.completed_at is not None:
                continue  # already completed: the first completion counts
            if existing is not None:
                row["model"] = row["model"] or existing.model
                row["started_at"] = row["started_at"] or existing.started_at
            row["model"] = row["model"] or UNKNOWN_MODEL
            ends.append(row)
        if ends:
            self._rows.execute(conn, self._sql.round_ends, ends)
            self._add_to_daily_models(conn, ends)

    def _close_open_rounds(self, conn: sa.Connection, batch: Batch) -> None:
        """Rounds still open when their run ended get a partial completion (failed, or
        cancelled with their run)."""
        ended = {key: row for key, row in batch.sessions.items() if row["completed_at"]}
        if not ended:
            return
        for round_id, start in list(batch.round_starts.items()):
            session_end = ended.get(start["run_id"] or "")
            if session_end is not None:
                del batch.round_starts[round_id]
                batch.round_ends.setdefault(round_id, _closed(start, session_end))
        columns = [t.rounds.c.round_id, t.rounds.c.run_id, t.rounds.c.session_id]
        columns += [t.rounds.c.model, t.rounds.c.started_at]
        query = sa.select(*columns).where(t.rounds.c.completed_at.is_(None))
        for chunk in _chunks(list(ended)):
            for row in conn.execute(query.where(t.rounds.c.run_id.in_(chunk))):
                start = dict(row._mapping)
                batch.round_ends.setdefault(row.round_id, _closed(start, ended[row.run_id]))

    def _add_to_daily_models(self, conn: sa.Connection, rows: list[Row]) -> None:
        sums: defaultdict[tuple[date, str], Row] = defaultdict(_daily_model_row)
        for row in rows:
            total = sums[(row["day"], row["model"])]
            total["rounds"] += 1
            total["failed_rounds"] += row["status"] == "failed"
            total["partial_rounds"] += bool(row["partial"])
            total["latency_ms"] += row["latency_ms"] or 0
            for kind in t.USAGE_KINDS:
                total[kind] += row[kind]
        values = [
            {"day": day, "model": model, **total} for (day, model), total in sorted(sums.items())
        ]
        self._rows.execute(conn, self._sql.increments[t.daily_models.name], values)

    # Tool calls

    def _write_tool_calls(self, conn: sa.Connection, batch: Batch) -> None:
        if not batch.tool_calls:
            return
        known = _stored_tool_calls(conn, list(batch.tool_calls.values()))
        rows = [row for key, row in batch.tool_calls.items() if key not in known]
        if not rows:
            return
        self._rows.execute(conn, self._sql.tool_calls, rows)
        sums: defaultdict[tuple[date, str], Row] = defaultdict(
            lambda: {"calls": 0, "failures": 0, "latency_ms": 0, "cancelled": 0}
        )
        for row in rows:
            total = sums[(row["day"], row["tool_name"])]
            total["calls"] += 1
            total["failures"] += not row["success"] and not row["cancelled"]
            total["cancelled"] += row["cancelled"]
            total["latency_ms"] += row["latency_ms"]
        values = [
            {"day": day, "tool_name": name, **total} for (day, name), total in sorted(sums.items())
        ]
        self._rows.execute(conn, self._sql.increments[t.daily_tools.name], values)

    # Forward requests

    def _write_forward(self, conn: sa.Connection, batch: Batch) -> None:
        self._rows.execute(conn, self._sql.forward_starts, list(batch.forward_starts.values()))
        self._rows.execute(conn, self._sql.forward_ends, list(batch.forward_ends.values()))

    # Retention and reconciliation

    async def prune(self, before: date) -> int:
        """Delete every record (and rollup row) of a day before ``before``; returns the count."""

        def transaction(conn: sa.Connection) -> int:
            deleted = 0
            for table in t.ALL_TABLES:
                deleted += conn.execute(table.delete().where(table.c.day < before)).rowcount
            cutoff = datetime.combine(before, datetime.min.time())
            open_rounds = t.rounds.delete().where(
                t.rounds.c.day.is_(None), t.rounds.c.started_at < cutoff
            )
            return deleted + conn.execute(open_rounds).rowcount

        return await self.transaction(transaction)

    async def open_runs(self, *, started_before: datetime, limit: int = 1000) -> list[str]:
        """Runs whose start was recorded before ``started_before`` but no end yet."""
        query = (
            sa.select(t.sessions.c.run_id)
            .where(t.sessions.c.status == "running", t.sessions.c.started_at < started_before)
            .order_by(t.sessions.c.started_at)
            .limit(limit)
        )
        async with self.connect() as conn:
            return list(await conn.scalars(query))


def _closed(start: Row, session_end: Row) -> Row:
    """A partial completion for a round that was open when its run ended: ``cancelled`` when the
    run was, else ``failed``."""
    started, ended = start.get("started_at"), session_end["completed_at"]
    latency = max(0, int((ended - started).total_seconds() * 1000)) if started else 0
    cancelled = session_end["status"] == "cancelled"
    return {
        "round_id": start["round_id"],
        "run_id": start["run_id"],
        "session_id": start["session_id"],
        "model": start.get("model"),
        "status": "cancelled" if cancelled else "failed",
        "partial": True,
        "error": f"the run ended ({session_end['status']}) before the round did",
        "started_at": started,
        "completed_at": ended,
        "day": ended.date(),
        "latency_ms": latency,
        **{kind: 0 for kind in t.USAGE_KINDS},
    }


def _daily_model_row() -> Row:
    counters = ("rounds", "failed_rounds", "partial_rounds", "latency_ms", *t.USAGE_KINDS)
    return dict.fromkeys(counters, 0)


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _select_in(
    conn: sa.Connection,
    columns: list[sa.Column[Any]],
    key: sa.Column[Any],
    ids: list[str],
    *,
    lock: bool = False,
) -> dict[str, Any]:
    """Rows whose ``key`` is among ``ids``, by ``key`` (the first column). ``lock``: held until
    the transaction ends (``FOR UPDATE`` on PostgreSQL, taken in ``key`` order with ``ids``
    sorted; SQLite's writes are serialized)."""
    found: dict[str, Any] = {}
    for chunk in _chunks(ids):
        query = sa.select(*columns).where(key.in_(chunk))
        if lock:
            query = query.order_by(key).with_for_update()
        for row in conn.execute(query):
            found[row[0]] = row
    return found


def _stored_tool_calls(conn: sa.Connection, rows: list[Row]) -> set[str]:
    """The event ids of ``rows`` already stored (looked up by their key, session then id)."""
    c = t.tool_calls.c
    found: set[str] = set()
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        sessions = {row["session_id"] for row in chunk}
        query = sa.select(c.event_id).where(
            c.session_id.in_(sessions), c.event_id.in_([row["event_id"] for row in chunk])
        )
        found.update(conn.scalars(query))
    return found
