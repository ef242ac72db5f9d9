"""What one POST /v1/runs asks of PostgreSQL: its statements and round trips, counted (not timed).

A headless run on an API process is the session's insert and the run's reservation, one
transaction of one statement each, and nothing more: the session just created is not read
back, the reservation inserts the run on its free session without looking first (``INSERT … ON
CONFLICT DO NOTHING``), and no ping precedes a transaction (SQLAlchemy's ``pool_pre_ping`` is
three round trips on asyncpg; only a connection idle for a while is pinged). Every
round trip here is on the path of the drain benchmark's POSTs, and the reservation's are on
the enqueue → start latency (``bench/distributed.py``).
"""

from __future__ import annotations

import contextvars
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa

import culm
from culm.api.app import create_app
from culm.runtime.roles import Role
from culm.storage import dialect
from culm.storage.sql import SqlStore

# The statements of the request under test, not those of the engine's background work.
_counting: contextvars.ContextVar[Counter[str] | None] = contextvars.ContextVar(
    "counting", default=None
)


def _count(key: str) -> None:
    counter = _counting.get()
    if counter is not None:
        counter[key] += 1


def _watch(engine: sa.Engine) -> None:
    """Count each statement SQLAlchemy executes, and each query asyncpg sends on its own (the
    transactions' BEGIN/COMMIT/ROLLBACK, pings), of the counting context."""
    watched: set[int] = set()

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _statement(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        _count(statement.split()[0].upper())

    @sa.event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        driver = dbapi_connection.driver_connection
        if id(driver) not in watched:
            watched.add(id(driver))
            driver.add_query_logger(lambda record: _count(f"driver {record.query.strip()!r}"))


@pytest.fixture
async def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx2.AsyncClient]:
    """An API-only engine (it claims nothing) and a client that calls its app in this task.
    Only a connection idle for a while is pinged at checkout: not one here, however slow the
    machine."""
    monkeypatch.setattr(dialect, "PING_IDLE_SECONDS", 3600.0)
    settings = culm.Settings(home=tmp_path / "home")
    engine = culm.Engine(settings, role=Role.API)
    app = create_app(settings, engine=engine)
    async with app.router.lifespan_context(app):
        assert isinstance(engine.store, SqlStore)
        _watch(engine.store._reader.sync_engine)  # the writer's engine too, on PostgreSQL
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://culm") as client:
            yield client


# The round trips counted are PostgreSQL's; SQLite's transactions do not leave the process.
@pytest.mark.backends("postgres")
async def test_a_headless_run_is_one_transaction_of_two_statements(
    api: httpx2.AsyncClient,
) -> None:
    body = {"message": "hi", "model": "scripted:echo"}
    assert (await api.post("/v1/runs", json=body)).status_code == 202  # connections opened
    counted: Counter[str] = Counter()
    token = _counting.set(counted)
    try:
        response = await api.post("/v1/runs", json=body)
    finally:
        _counting.reset(token)
    assert response.status_code == 202, response.text
    # The session's INSERT and the reservation's INSERT … RETURNING pg_notify(…), in one
    # transaction (one BEGIN and COMMIT); no ping, no read transaction.
    assert counted == {
        "INSERT": 2,
        "driver 'BEGIN;'": 1,
        "driver 'COMMIT;'": 1,
    }
