"""Takeover cases the main takeover tests leave out (found by mutation testing, issue #22): a
sweep that both follows dead owners and expired leases, its per-transaction limit and order,
which events say that a released run started, and (PostgreSQL) a sweeper skipping a row
another transaction holds."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
import sqlalchemy as sa

from culm.domain.models import RunStatus
from culm.storage import dbtime, takeover
from culm.storage.base import SweepPolicy
from culm.storage.schema import runs, workers
from culm.storage.sql import SqlStore
from tests.storage.queue_support import (
    T0,
    a_run,
    get,
    owned_run,
    raw_connection,
    raw_rows,
    ready_run,
    tokens,
)

REQUEUE = SweepPolicy(requeue=True, max_attempts=3, lease_seconds=10)


async def test_a_sweep_naming_dead_owners_still_takes_expired_leases(store: SqlStore) -> None:
    expired = await owned_run(store, "slow", lease_seconds=0)
    dead = await owned_run(store, "dead", lease_seconds=3600)
    alive = await owned_run(store, "alive", lease_seconds=3600)

    swept = await store.sweep("me", REQUEUE, dead_owners=["dead"])

    assert sorted(run.run_id for run in swept) == sorted([expired.run_id, dead.run_id])
    assert (await get(store, alive.run_id)).status is RunStatus.RUNNING


async def test_a_sweep_takes_at_most_its_limit_earliest_lease_first(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = sorted([(await owned_run(store, "dead", lease_seconds=0)).run_id for _ in range(3)])
    # Leases in the reverse of run_id order: the sweep follows the leases.
    for offset, run_id in enumerate(reversed(made)):
        expires = T0 + timedelta(seconds=offset)
        await store.write(
            lambda conn, run_id=run_id, expires=expires: conn.execute(
                runs.update().where(runs.c.run_id == run_id).values(lease_expires_at=expires)
            )
        )
    monkeypatch.setattr(takeover, "SWEEP_LIMIT", 2)

    first = await store.sweep("me", REQUEUE)
    second = await store.sweep("me", REQUEUE)

    assert [run.run_id for run in first] == [made[2], made[1]]
    assert [run.run_id for run in second] == [made[0]]


async def test_a_run_whose_only_event_is_unfenced_counts_as_started(store: SqlStore) -> None:
    run = await owned_run(store, "w1")
    await store.append_events(tokens(run, 1))  # no fence: its epoch is unknown

    assert await store.release_runs("w1", {run.run_id: 1}, clean=True) == [run.run_id]

    released = await get(store, run.run_id)
    assert (released.status, released.attempt) == (RunStatus.PENDING, 2)
    assert [event.type for event in await store.read_events(run.run_id)] == [
        "token",
        "run_recovered",
    ]


async def test_only_events_of_the_claim_released_say_it_started(store: SqlStore) -> None:
    # Another run's unfenced event, and this run's events under an earlier claim: neither says
    # that the claim released now executed.
    other = await owned_run(store, "w9")
    await store.append_events(tokens(other, 1))
    run = await ready_run(store, input="hi")
    [claimed] = await store.claim_runs("w1", limit=1, lease_seconds=300)
    await store.append_events(tokens(claimed, 2), fences={run.run_id: ("w1", claimed.epoch)})
    assert await store.release_runs("w1", {run.run_id: claimed.epoch}, clean=True) == [run.run_id]
    assert (await get(store, run.run_id)).attempt == 2

    [again] = await store.claim_runs("w1", limit=1, lease_seconds=300)
    assert again.run_id == run.run_id
    assert await store.release_runs("w1", {run.run_id: again.epoch}, clean=True) == [run.run_id]

    released = await get(store, run.run_id)
    assert (released.status, released.attempt, released.epoch) == (
        RunStatus.PENDING,
        2,
        again.epoch + 1,
    )
    assert len(await store.read_events(run.run_id)) == 3, "two tokens, one run_recovered"


async def test_a_sweeper_skips_a_run_another_transaction_holds(
    postgres_store: SqlStore, postgres_head_url: str
) -> None:
    # PostgreSQL only: SQLite has one writer, so no row lock to skip.
    store = postgres_store
    held = await owned_run(store, "dead", lease_seconds=0)
    free = await owned_run(store, "dead", lease_seconds=0)
    gate = await raw_connection(postgres_head_url)
    try:
        tx = gate.transaction()
        await tx.start()
        await gate.execute("SELECT 1 FROM runs WHERE run_id = $1 FOR UPDATE", held.run_id)
        sweeping = asyncio.create_task(store.sweep("me", REQUEUE))
        done, _ = await asyncio.wait({sweeping}, timeout=30)  # a bound for a hang, not a timing
        await tx.rollback()
    finally:
        await gate.close()
    assert done, "the sweep waited for the row another transaction holds"
    swept = await sweeping

    assert [run.run_id for run in swept] == [free.run_id]
    assert [run.run_id for run in await store.sweep("me", REQUEUE)] == [held.run_id]


async def test_a_run_handed_back_unstarted_wakes_the_workers(store: SqlStore) -> None:
    run = await ready_run(store)
    [claimed] = await store.claim_runs("w1", limit=1, lease_seconds=300)
    wakeups = store.wakeups()
    try:
        assert await store.release_runs("w1", {run.run_id: claimed.epoch}, clean=True) == [
            run.run_id
        ]
        assert await wakeups.wait(10) is True, "ready again: workers are woken"
    finally:
        await wakeups.aclose()


async def test_a_child_expired_with_its_parent_is_taken_once(store: SqlStore) -> None:
    parent = await owned_run(store, "dead", lease_seconds=0)
    child = await owned_run(store, "dead", lease_seconds=0, parent_run_id=parent.run_id)

    swept = await store.sweep("me", REQUEUE)  # the parent's lease is the earlier: it goes first

    assert sorted(run.run_id for run in swept) == sorted([parent.run_id, child.run_id])
    assert [event.type for event in await store.read_events(child.run_id)] == ["cancelled"]
    assert (await get(store, child.run_id)).epoch == 2


async def test_runs_ended_by_a_takeover_record_when_and_why(store: SqlStore) -> None:
    parent = await owned_run(store, "dead", lease_seconds=0)
    child = await owned_run(store, "dead", lease_seconds=3600, parent_run_id=parent.run_id)
    asked = await owned_run(store, "dead", lease_seconds=0)
    await store.request_cancel(asked.run_id, "user")

    await store.sweep("me", REQUEUE)

    for run_id, reason in ((child.run_id, "parent recovered"), (asked.run_id, "user")):
        ended = await get(store, run_id)
        assert ended.status is RunStatus.CANCELLED and ended.completed_at is not None
        [row] = await raw_rows(
            store, sa.select(runs.c.cancel_requested).where(runs.c.run_id == run_id)
        )
        assert row.cancel_requested == reason


async def test_a_takeover_ends_only_the_children_of_the_runs_it_takes(store: SqlStore) -> None:
    dead = await owned_run(store, "dead", lease_seconds=0)
    dead_child = await owned_run(store, "dead", lease_seconds=3600, parent_run_id=dead.run_id)
    alive = await owned_run(store, "alive", lease_seconds=3600)
    alive_child = await owned_run(store, "alive", lease_seconds=3600, parent_run_id=alive.run_id)

    swept = await store.sweep("me", REQUEUE)

    assert sorted(run.run_id for run in swept) == sorted([dead.run_id, dead_child.run_id])
    for run_id in (alive.run_id, alive_child.run_id):
        assert (await get(store, run_id)).status is RunStatus.RUNNING


async def test_a_takeover_skips_a_child_another_transaction_holds(
    postgres_store: SqlStore, postgres_head_url: str
) -> None:
    # PostgreSQL only (see above). The held child is swept on its own lease later.
    store = postgres_store
    parent = await owned_run(store, "dead", lease_seconds=0)
    child = await owned_run(store, "dead", lease_seconds=3600, parent_run_id=parent.run_id)
    gate = await raw_connection(postgres_head_url)
    try:
        tx = gate.transaction()
        await tx.start()
        await gate.execute("SELECT 1 FROM runs WHERE run_id = $1 FOR UPDATE", child.run_id)
        sweeping = asyncio.create_task(store.sweep("me", REQUEUE))
        done, _ = await asyncio.wait({sweeping}, timeout=30)  # a bound for a hang, not a timing
        await tx.rollback()
    finally:
        await gate.close()
    assert done, "the sweep waited for the row another transaction holds"
    swept = await sweeping

    assert [run.run_id for run in swept] == [parent.run_id]
    assert (await get(store, child.run_id)).status is RunStatus.RUNNING


async def test_a_sweep_that_takes_runs_retires_silent_workers_too(store: SqlStore) -> None:
    await store.register_worker(
        "silent", host="h", pid=1, boot_id=None, pid_namespace=None, kind="worker", concurrency=1
    )
    run = await owned_run(store, "gone", lease_seconds=0)
    name = store.dialect.name
    await store.write(
        lambda conn: conn.execute(
            workers.update().values(last_heartbeat_at=dbtime.later(name, -11))
        )
    )

    [swept] = await store.sweep("me", REQUEUE)

    assert swept.run_id == run.run_id
    [silent] = await store.list_workers(lease_seconds=10, include_stopped=True)
    assert silent.stopped_at is not None


async def test_a_sweep_promotes_at_most_its_limit_of_stranded_sessions(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    queued = []
    for _ in range(2):
        active = await ready_run(store)
        queued.append((await store.reserve_run(a_run(active.session_id), queue=True)).run)
        # End the active run without its promotion: the queued one is stranded.
        await store.write(
            lambda conn, run_id=active.run_id: conn.execute(
                runs.update().where(runs.c.run_id == run_id).values(status="completed")
            )
        )
    monkeypatch.setattr(takeover, "SWEEP_LIMIT", 1)

    async def still_queued() -> int:
        return sum([(await get(store, run.run_id)).queued for run in queued])

    assert await store.sweep("me", REQUEUE) == []
    assert await still_queued() == 1
    assert await store.sweep("me", REQUEUE) == []
    assert await still_queued() == 0
