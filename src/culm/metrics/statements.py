"""The metrics store's writes as SQL statements, built once per dialect.

Every write is ``INSERT … ON CONFLICT`` (SQLite and PostgreSQL spell it the same; ``insert`` is
the dialect's construct), executed once per row of a batch:

- ``sessions``: a run's row, merged in Python first (see ``batch.merge_run``), replaces the stored;
- ``round_starts`` fill in what an earlier completion lacked, never undo it;
- ``round_ends`` complete a round (the store drops completions of rounds already completed);
- ``tool_calls``, ``system``: inserted once (a duplicate is ignored);
- ``forward_starts`` / ``forward_ends``: like the rounds';
- ``increments[table]``: add a batch's counts to a daily rollup row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.dml import Insert

from culm.metrics import tables as t

Dialected = Callable[[sa.Table], Any]  # sqlite.insert or postgresql.insert

ROUND_RESULT = ("status", "partial", "error", "completed_at", "day", "latency_ms", *t.USAGE_KINDS)
FORWARD_START = ("endpoint", "model", "is_stream", "started_at", "trace_id")
FORWARD_RESULT = (
    "status",
    "status_code",
    "has_usage",
    "latency_ms",
    "error",
    "partial",
    "completed_at",
    "day",
    *t.USAGE_KINDS,
)


class Statements:
    def __init__(self, insert: Dialected) -> None:
        self._insert = insert
        self.sessions = self._replace(t.sessions, ["run_id"])
        self.round_starts = self._fill(t.rounds, ["round_id"], ("started_at", "model", "run_id"))
        self.round_ends = self._round_ends()
        self.tool_calls = insert(t.tool_calls).on_conflict_do_nothing()
        self.system = insert(t.system_events).on_conflict_do_nothing()
        self.forward_starts = self._fill(t.forward_requests, ["request_id"], FORWARD_START)
        self.forward_ends = self._forward_ends()
        self.increments = {
            table.name: self._increment(table)
            for table in (t.daily_models, t.daily_runs, t.daily_tools)
        }

    def _replace(self, table: sa.Table, keys: list[str]) -> Insert:
        stmt = self._insert(table)
        set_ = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
        return stmt.on_conflict_do_update(index_elements=keys, set_=set_)  # type: ignore[no-any-return]

    def _fill(self, table: sa.Table, keys: list[str], names: tuple[str, ...]) -> Insert:
        """On conflict, set only what the stored row lacks."""
        stmt = self._insert(table)
        set_ = {name: sa.func.coalesce(table.c[name], stmt.excluded[name]) for name in names}
        return stmt.on_conflict_do_update(index_elements=keys, set_=set_)  # type: ignore[no-any-return]

    def _round_ends(self) -> Insert:
        table = t.rounds
        stmt = self._insert(table)
        set_: dict[str, Any] = {name: stmt.excluded[name] for name in ROUND_RESULT}
        set_["model"] = stmt.excluded.model
        for name in ("started_at", "run_id"):
            set_[name] = sa.func.coalesce(table.c[name], stmt.excluded[name])
        return stmt.on_conflict_do_update(index_elements=["round_id"], set_=set_)  # type: ignore[no-any-return]

    def _forward_ends(self) -> Insert:
        table = t.forward_requests
        stmt = self._insert(table)
        set_: dict[str, Any] = {name: stmt.excluded[name] for name in FORWARD_RESULT}
        for name in FORWARD_START:
            set_[name] = sa.func.coalesce(table.c[name], stmt.excluded[name])
        return stmt.on_conflict_do_update(index_elements=["request_id"], set_=set_)  # type: ignore[no-any-return]

    def _increment(self, table: sa.Table) -> Insert:
        stmt = self._insert(table)
        keys = [c.name for c in table.primary_key.columns]
        set_ = {c.name: c + stmt.excluded[c.name] for c in table.columns if c.name not in keys}
        return stmt.on_conflict_do_update(index_elements=keys, set_=set_)  # type: ignore[no-any-return]
