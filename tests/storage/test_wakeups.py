"""A transaction's :class:`Wake` on PostgreSQL: one ``NOTIFY culm_runs`` at most, in whichever
form (a plain ``pg_notify``, or ``RETURNING pg_notify(…)`` of the insert that makes the run
ready, naming it), and none from a transaction that made nothing ready.

The notifications are heard on a plain asyncpg connection (its ``LISTEN`` is in place once
``add_listener`` returns); each test ends with a marker notification of its own, and since
PostgreSQL delivers notifications in commit order, everything heard before the marker is all
the transactions sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from culm.storage import ops
from culm.storage.rows import run_to_row
from culm.storage.sql import SqlStore
from culm.storage.wakeups import _MAX_HINTS, CHANNEL, PostgresWakeups, Signal, Wake
from tests.storage.queue_support import a_run, new_session, raw_connection

MARKER = "the end"


class Heard:
    """The payloads of ``culm_runs`` notifications, up to the marker."""

    def __init__(self) -> None:
        self.payloads: list[str] = []
        self.ended = asyncio.Event()

    def __call__(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload == MARKER:
            self.ended.set()
        else:
            self.payloads.append(payload)

    async def until_marker(self, store: SqlStore) -> list[str]:
        """Every payload heard so far, once a marker sent now is heard."""
        self.ended.clear()
        notify = sa.text("SELECT pg_notify(:channel, :payload)")
        values = {"channel": CHANNEL, "payload": MARKER}
        await store.write(lambda conn: conn.execute(notify, values))
        async with asyncio.timeout(30):
            await self.ended.wait()
        return list(self.payloads)


@pytest.fixture
async def heard(postgres_store: SqlStore, postgres_head_url: str) -> AsyncIterator[Heard]:
    listener = await raw_connection(postgres_head_url)
    heard = Heard()
    await listener.add_listener(CHANNEL, heard)
    try:
        yield heard
    finally:
        await listener.close()


async def _ready_row(store: SqlStore) -> tuple[str, dict[str, Any]]:
    """A ready run's row for ``ops.RUN_INSERT``, on a fresh session: its run_id and values."""
    session = await new_session(store)
    run = a_run(session.session_id)
    row = {**run_to_row(run), "queued": False, "owner": None, "epoch": 0, "lease_expires_at": None}
    return run.run_id, row


async def test_a_wake_notifies_once_across_transactions(
    postgres_store: SqlStore, heard: Heard
) -> None:
    wake = Wake(notify=True)
    await postgres_store.write(wake)
    assert wake.sent is True
    assert await heard.until_marker(postgres_store) == [""]  # in that first transaction
    await postgres_store.write(wake)  # already sent: not again
    await postgres_store.write(Wake(notify=False))  # SQLite's kind: never a NOTIFY

    assert await heard.until_marker(postgres_store) == [""]


async def test_an_insert_sends_the_wake_naming_its_run_once(
    postgres_store: SqlStore, heard: Heard
) -> None:
    first, first_row = await _ready_row(postgres_store)
    second, second_row = await _ready_row(postgres_store)
    wake = Wake(notify=True)

    def insert_both(conn: sa.Connection) -> None:
        conn.execute(wake.sent_by(ops.RUN_INSERT, first), first_row)
        assert wake.sent is True
        conn.execute(wake.sent_by(ops.RUN_INSERT, second), second_row)

    await postgres_store.write(insert_both)

    assert await heard.until_marker(postgres_store) == [first]
    assert await postgres_store.get_run(first) is not None
    assert await postgres_store.get_run(second) is not None


async def test_an_insert_if_free_after_a_sent_wake_sends_nothing_more(
    postgres_store: SqlStore, heard: Heard
) -> None:
    first, first_row = await _ready_row(postgres_store)
    second, second_row = await _ready_row(postgres_store)
    taken = {**second_row, "run_id": "taken-slot"}  # the second's session: its slot is taken
    wake = Wake(notify=True)

    def insert(conn: sa.Connection) -> tuple[bool, bool]:
        inserted = wake.sent_if_inserted(conn, ops.RUN_INSERT_IF_FREE, first_row, first)
        again = wake.sent_if_inserted(conn, ops.RUN_INSERT_IF_FREE, second_row, second)
        return inserted, again

    assert await postgres_store.write(insert) == (True, True)
    refused = Wake(notify=True)
    not_inserted = await postgres_store.write(
        lambda conn: refused.sent_if_inserted(conn, ops.RUN_INSERT_IF_FREE, taken, "taken-slot")
    )
    assert not_inserted is False and refused.sent is False

    assert await heard.until_marker(postgres_store) == [first]


async def test_in_process_wake_ups_name_no_runs(sqlite_store: SqlStore) -> None:
    # SQLite's wake-ups are the in-process signal alone: no hints, so a woken worker claims.
    wakeups = sqlite_store.wakeups()
    try:
        session = await new_session(sqlite_store)
        await sqlite_store.reserve_run(a_run(session.session_id), queue=False)
        assert await wakeups.wait(10) is True
        assert wakeups.take_hints() == []
    finally:
        await wakeups.aclose()


async def test_hints_past_the_bound_end_in_one_that_names_no_run() -> None:
    """A listener that heard more reservations than a claimer reads at once keeps the first
    ones and ends with "" (claim whatever is ready), and is woken."""
    listener = PostgresWakeups(Signal(), {"host": "127.0.0.1", "port": 1, "user": "nobody"})
    try:
        for i in range(_MAX_HINTS + 5):  # as asyncpg calls it for each notification heard
            listener._notified(None, 0, CHANNEL, f"run-{i}")
        assert await listener.wait(0) is True
        assert listener.take_hints() == [f"run-{i}" for i in range(_MAX_HINTS - 1)] + [""]
        assert listener.take_hints() == []
    finally:
        await listener.aclose()
