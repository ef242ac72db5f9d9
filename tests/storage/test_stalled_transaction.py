"""A process stalled inside a PostgreSQL transaction (SIGSTOP, a VM pause) loses its session,
and with it its row locks, after 5 s: a sweeper's ``FOR UPDATE SKIP LOCKED`` would otherwise
skip its runs for as long as the stall lasts (found by tests/distributed/test_stall.py)."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from culm.storage.sql import SqlStore


async def test_the_store_sessions_end_when_idle_inside_a_transaction(
    postgres_store: SqlStore,
) -> None:
    async with postgres_store.read_connection() as stalled:
        timeout = await stalled.scalar(sa.text("SHOW idle_in_transaction_session_timeout"))
        assert timeout == "5s"
        assert await stalled.scalar(sa.text("SELECT pg_try_advisory_xact_lock(14)"))
        # The holder now does nothing inside its transaction, as a stopped process would.
        async with postgres_store.read_connection() as other:
            async with asyncio.timeout(10):
                while not await other.scalar(sa.text("SELECT pg_try_advisory_xact_lock(14)")):
                    await other.rollback()
                    await asyncio.sleep(0.1)
        with pytest.raises(sa.exc.DBAPIError):  # its session is gone
            await stalled.execute(sa.text("SELECT 1"))
