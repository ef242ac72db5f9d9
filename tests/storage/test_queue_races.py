"""Interleavings of the run queue's transactions on PostgreSQL, forced with row locks held by
a connection of the test's own (two stores on one database, as two processes have them)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from culm.domain.models import RunStatus, Usage
from culm.storage.base import Renewal, SweepPolicy
from culm.storage.schema import runs
from culm.storage.sql import SqlStore
from tests.storage.queue_support import (
    T0,
    a_run,
    get,
    new_session,
    owned_run,
    raw_connection,
    ready_run,
    tokens,
    until_waiting,
)


@pytest.fixture
async def pg_stores(postgres_head_url: str) -> AsyncIterator[tuple[SqlStore, SqlStore]]:
    first, second = SqlStore(postgres_head_url), SqlStore(postgres_head_url)
    await first.start()
    await second.start()
    try:
        yield first, second
    finally:
        await second.aclose()
        await first.aclose()


async def test_a_run_queued_while_the_active_one_ends_is_promoted(
    pg_stores: tuple[SqlStore, SqlStore], postgres_head_url: str
) -> None:
    """Review finding 3: the enqueue has read the active run; that run ends (its promotion
    finds nothing queued yet) before the enqueue commits. The queued run must not wait behind
    a run that has ended."""
    first, second = pg_stores
    active = await owned_run(first, "w1")
    queued = a_run(active.session_id)
    gate = await raw_connection(postgres_head_url)
    try:
        tx = gate.transaction()
        await tx.start()
        # The queued insert's foreign-key check (FOR KEY SHARE on the session) waits on this.
        await gate.execute(
            "SELECT 1 FROM sessions WHERE session_id = $1 FOR UPDATE", active.session_id
        )
        enqueue = asyncio.create_task(first.reserve_run(queued, queue=True))
        await until_waiting(gate, 1)
        finish = asyncio.create_task(
            second.finish_run(
                active.run_id,
                fence=("w1", 1),
                status=RunStatus.COMPLETED,
                error=None,
                usage=Usage(),
            )
        )
        await until_waiting(gate, 2, unless=finish)  # it waits for the enqueue, or it is done
        await tx.rollback()
        reservation = await enqueue
        await finish
    finally:
        await gate.close()

    assert reservation.active_run_id == active.run_id
    assert (await get(first, active.run_id)).status is RunStatus.COMPLETED
    now = await get(first, queued.run_id)
    assert now.status is RunStatus.PENDING and not now.queued, "promoted: it holds the slot"


async def test_the_sweeper_promotes_a_stranded_queued_run(store: SqlStore) -> None:
    """The safety net: a session with queued runs and no active one gets its first queued run
    made ready by the next sweep."""
    session = await new_session(store)
    active = (await store.reserve_run(a_run(session.session_id), queue=False)).run
    first = (await store.reserve_run(a_run(session.session_id), queue=True)).run
    second = (await store.reserve_run(a_run(session.session_id), queue=True)).run

    def strand(conn: sa.Connection) -> None:  # end the active run without its promotion
        conn.execute(runs.update().where(runs.c.run_id == active.run_id).values(status="completed"))

    await store.write(strand)
    policy = SweepPolicy(requeue=True, max_attempts=3, lease_seconds=10)
    assert await store.sweep("sweeper", policy) == []

    assert not (await get(store, first.run_id)).queued
    assert (await get(store, second.run_id)).queued
    claimed = await store.claim_runs("w", limit=5, lease_seconds=60)
    assert [run.run_id for run in claimed] == [first.run_id]


async def test_a_renewal_and_an_event_batch_of_one_worker_never_deadlock(
    pg_stores: tuple[SqlStore, SqlStore], postgres_head_url: str
) -> None:
    """Review finding 4: the event batch locks its runs' rows in run_id order; a renewal that
    locked them in plan order (here: physical order, the larger run_id first) could hold one
    while waiting for the other, which the batch holds while waiting for the first."""
    first, second = pg_stores
    later = await owned_run(first, "w1", run_id="run-b")  # stored first: scanned first
    earlier = await owned_run(first, "w1", run_id="run-a")
    gate = await raw_connection(postgres_head_url)
    try:
        tx = gate.transaction()
        await tx.start()
        # Holds the batch (FOR UPDATE) off run-b, but not an UPDATE of it (FOR NO KEY UPDATE).
        await gate.execute("SELECT 1 FROM runs WHERE run_id = 'run-b' FOR KEY SHARE")
        events = tokens(earlier, 1) + tokens(later, 1)
        fences = {"run-a": ("w1", 1), "run-b": ("w1", 1)}
        batch = asyncio.create_task(second.append_events(events, fences=fences))
        await until_waiting(gate, 1)  # the batch holds run-a and waits for run-b
        renew = asyncio.create_task(
            first.renew_leases("w1", {"run-a": 1, "run-b": 1}, lease_seconds=60)
        )
        await until_waiting(gate, 2)  # the renewal waits for run-a
        await tx.commit()
        results = await asyncio.gather(batch, renew, return_exceptions=True)
    finally:
        await gate.close()

    assert results[0] == set(), results[0]
    assert results[1] == Renewal(cancel_requested={}, lost=[]), results[1]


async def test_a_claim_skips_a_ready_run_another_transaction_has_locked(
    pg_stores: tuple[SqlStore, SqlStore], postgres_head_url: str
) -> None:
    """The claim's pick is ``FOR UPDATE SKIP LOCKED``: a ready run whose row another claimer
    holds is passed over at once for the next one, never waited for (and then taken twice)."""
    store, _ = pg_stores
    held = await ready_run(store, created_at=T0)  # the older: the first a claim would take
    free = await ready_run(store, created_at=T0 + timedelta(seconds=1))
    gate = await raw_connection(postgres_head_url)
    try:
        tx = gate.transaction()
        await tx.start()
        await gate.execute("SELECT 1 FROM runs WHERE run_id = $1 FOR UPDATE", held.run_id)
        claim = asyncio.create_task(store.claim_runs("w1", limit=2, lease_seconds=60))
        await until_waiting(gate, 1, unless=claim)  # done, or it waits for the held row
        waited = not claim.done()
        await tx.rollback()
        claimed = await claim
    finally:
        await gate.close()

    assert not waited, "the claim waited for a locked row instead of skipping it"
    assert [run.run_id for run in claimed] == [free.run_id]
    assert (await get(store, held.run_id)).owner is None, "the skipped run is still ready"
