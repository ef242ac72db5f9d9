"""The hottest statements' SQL on SQLite: what keeps them prepared once."""

from __future__ import annotations

from sqlalchemy.dialects import sqlite

from culm.storage import queue


def _sql_and_values(statement: object) -> tuple[str, list[object]]:
    compiled = statement.compile(dialect=sqlite.pysqlite.dialect())  # type: ignore[attr-defined]
    return compiled.string, list(compiled.params.values())


def test_statuses_a_partial_index_matches_are_in_the_sql_not_bound() -> None:
    """SQLite prepares a statement again on every execution when a bound value decides whether
    a partial index's predicate holds (``status = ?`` against ``ix_runs_ready``'s
    ``status = 'pending'``): the claim and a queued run's look-up name it in their SQL."""
    for statement in [queue._claim_statement("sqlite", 10.0, False, False), queue._NEXT_QUEUED]:
        sql, values = _sql_and_values(statement)
        assert "runs.status = 'pending'" in sql
        assert "pending" not in values
