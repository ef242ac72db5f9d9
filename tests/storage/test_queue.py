"""The run queue on every backend: claims, fencing, wake-ups, workers and queue stats.

Claims take ready runs oldest first, each exactly once however many stores claim at once;
every write of a worker is fenced on (owner, epoch); leases are database time.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa

from culm.domain.models import Run, RunStatus, Usage, UserMessage
from culm.domain.time import new_id
from culm.errors import LeaseLostError
from culm.storage import dbtime, fencing
from culm.storage.base import Renewal, SweepPolicy
from culm.storage.schema import run_events, runs, workers
from culm.storage.sql import SqlStore
from culm.storage.wakeups import PostgresWakeups, Signal
from tests.storage.queue_support import (
    T0,
    a_run,
    get,
    new_session,
    owned_run,
    raw_rows,
    ready_run,
    tokens,
)

REQUEUE = SweepPolicy(requeue=True, max_attempts=3, lease_seconds=10)


# Claims


async def test_claims_take_ready_runs_oldest_first(store: SqlStore) -> None:
    ages = list(range(6))
    random.Random(7).shuffle(ages)
    made = {age: await ready_run(store, created_at=T0 + timedelta(seconds=age)) for age in ages}
    queued_session = made[0].session_id
    await store.reserve_run(a_run(queued_session), queue=True)  # queued: not ready

    first = await store.claim_runs("w1", limit=4, lease_seconds=300)
    rest = await store.claim_runs("w2", limit=4, lease_seconds=300)

    assert [run.run_id for run in first] == [made[age].run_id for age in range(4)]
    assert [run.run_id for run in rest] == [made[age].run_id for age in (4, 5)]
    assert all(run.status is RunStatus.RUNNING and run.epoch == 1 for run in first + rest)
    assert await store.claim_runs("w3", limit=4, lease_seconds=300) == []
    owners = await raw_rows(store, sa.select(runs.c.run_id, runs.c.owner, runs.c.epoch))
    by_id = {row.run_id: (row.owner, row.epoch) for row in owners}
    assert by_id[made[0].run_id] == ("w1", 1) and by_id[made[5].run_id] == ("w2", 1)
    assert await store.claim_runs("w3", limit=0, lease_seconds=300) == []


async def test_a_claim_leaves_the_runs_it_is_told_to_exclude(store: SqlStore) -> None:
    made = [await ready_run(store, created_at=T0 + timedelta(seconds=age)) for age in range(3)]
    skipped = {made[0].run_id, made[2].run_id}
    claimed = await store.claim_runs("w1", limit=3, lease_seconds=300, exclude=skipped)
    assert [run.run_id for run in claimed] == [made[1].run_id]
    # Still ready, unowned and at epoch 0, for any other claim.
    rest = await store.claim_runs("w2", limit=3, lease_seconds=300)
    assert [run.run_id for run in rest] == [made[0].run_id, made[2].run_id]
    assert all(run.epoch == 1 for run in rest)


async def test_a_claim_with_exclusions_still_looks_only_at_ready_runs(store: SqlStore) -> None:
    await owned_run(store, "w0", created_at=T0)  # older, but running: not a candidate
    ready = await ready_run(store, created_at=T0 + timedelta(seconds=1))
    claimed = await store.claim_runs("w1", limit=1, lease_seconds=300, exclude=[new_id()])
    assert [run.run_id for run in claimed] == [ready.run_id]


async def test_a_claim_of_only_some_runs_takes_those_alone(store: SqlStore) -> None:
    running = await owned_run(store, "w0", created_at=T0 - timedelta(seconds=1))
    older, wanted = [await ready_run(store, created_at=T0 + timedelta(seconds=s)) for s in (0, 1)]
    only = [running.run_id, wanted.run_id]  # the running one is no candidate, however old
    claimed = await store.claim_runs("w1", limit=1, lease_seconds=300, only=only)
    assert [run.run_id for run in claimed] == [wanted.run_id]
    assert await store.claim_runs("w1", limit=5, lease_seconds=300, only=[]) == []
    assert [run.run_id for run in await store.claim_runs("w2", limit=5, lease_seconds=300)] == [
        older.run_id
    ]


async def test_runs_made_at_the_same_moment_are_claimed_in_run_id_order(store: SqlStore) -> None:
    late_id, early_id = "run-b", "run-a"
    for run_id in (late_id, early_id):  # stored in the other order
        await ready_run(store, run_id=run_id, created_at=T0)
    claimed = await store.claim_runs("w1", limit=1, lease_seconds=300)
    assert [run.run_id for run in claimed] == [early_id]


async def test_a_claim_takes_at_most_its_limit(store: SqlStore) -> None:
    for _ in range(40):
        await ready_run(store)

    sizes = [len(await store.claim_runs("w1", limit=3, lease_seconds=300)) for _ in range(15)]

    assert sizes == [3] * 13 + [1, 0]


async def test_concurrent_claimers_claim_every_ready_run_exactly_once(
    two_stores: tuple[SqlStore, SqlStore],
) -> None:
    first, second = two_stores
    made = {(await ready_run(first)).run_id for _ in range(60)}
    claimed: list[tuple[str, Run]] = []

    async def claimer(store: SqlStore, name: str) -> None:
        while batch := await store.claim_runs(name, limit=5, lease_seconds=300):
            assert len(batch) <= 5, "never more than the limit"
            claimed.extend((name, run) for run in batch)

    await asyncio.wait_for(
        asyncio.gather(*(claimer(s, f"w{i}") for i, s in enumerate([first, second] * 3))),
        timeout=60,
    )

    counts = Counter(run.run_id for _, run in claimed)
    assert set(counts) == made and set(counts.values()) == {1}, "each claimed exactly once"
    rows = await raw_rows(first, sa.select(runs.c.run_id, runs.c.owner, runs.c.epoch))
    stored = {row.run_id: (row.owner, row.epoch) for row in rows}
    assert all(stored[run.run_id] == (name, 1) for name, run in claimed), "the winner holds it"


async def test_concurrent_workers_keep_each_sessions_enqueue_order(
    two_stores: tuple[SqlStore, SqlStore],
) -> None:
    first, second = two_stores
    enqueued: dict[str, list[str]] = {}
    for _ in range(6):
        session = await new_session(first)
        runs_of = [a_run(session.session_id) for _ in range(4)]
        for run in runs_of:
            await first.reserve_run(run, queue=True)
        enqueued[session.session_id] = [run.run_id for run in runs_of]
    started: dict[str, list[str]] = {sid: [] for sid in enqueued}
    active: set[str] = set()

    async def worker(store: SqlStore, name: str) -> None:
        idle = 0
        while idle < 3:
            batch = await store.claim_runs(name, limit=2, lease_seconds=300)
            idle = 0 if batch else idle + 1
            for run in batch:
                assert run.session_id not in active, "two active runs in one session"
                active.add(run.session_id)
                assert run.status is RunStatus.RUNNING, "started by its claim"
                started[run.session_id].append(run.run_id)
                active.discard(run.session_id)
                await store.finish_run(
                    run.run_id,
                    fence=(name, run.epoch),
                    status=RunStatus.COMPLETED,
                    error=None,
                    usage=Usage(),
                )
            await asyncio.sleep(0)

    await asyncio.wait_for(
        asyncio.gather(worker(first, "a"), worker(second, "b"), worker(first, "c")), timeout=60
    )

    assert started == enqueued


# Fencing


async def taken_over(store: SqlStore, owner: str = "w1") -> Run:
    """A run ``owner`` started at epoch 1 whose lease ran out: the sweeper re-queued it
    (epoch 2); ``owner`` does not know yet."""
    run = await owned_run(store, owner, lease_seconds=0)
    await store.append_events(tokens(run, 2), fences={run.run_id: (owner, 1)})
    [swept] = await store.sweep("sweeper", REQUEUE)
    assert (swept.run_id, swept.epoch, swept.status) == (run.run_id, 2, RunStatus.PENDING)
    return swept


async def test_a_claim_starts_its_runs_and_stores_each_input_once(store: SqlStore) -> None:
    # Started in the claim's own transaction (no start_run after it): running, started in
    # database time, the input stored as the run's first message; a later claim of the run
    # (after a takeover) does not store it again.
    run = await ready_run(store, input="hello")
    [claimed] = await store.claim_runs("w1", limit=1, lease_seconds=0)

    assert claimed.status is RunStatus.RUNNING
    assert claimed.started_at is not None
    assert await get(store, run.run_id) == claimed
    assert await store.get_messages(run.session_id) == [UserMessage(content="hello")]
    [swept] = await store.sweep("sweeper", REQUEUE)
    assert (swept.status, swept.started_at) == (RunStatus.PENDING, None)
    [again] = await store.claim_runs("w2", limit=1, lease_seconds=300)
    assert (again.status, again.epoch, again.attempt) == (RunStatus.RUNNING, 3, 2)
    assert await store.get_messages(run.session_id) == [UserMessage(content="hello")]


async def test_a_stale_epoch_writes_nothing(store: SqlStore) -> None:
    run = await taken_over(store)
    before = await get(store, run.run_id)
    events_before = await store.read_events(run.run_id)

    fenced = await store.append_events(tokens(run, 2, first_seq=4), fences={run.run_id: ("w1", 1)})
    with pytest.raises(LeaseLostError) as lost:
        await store.append_messages(
            run.session_id, [UserMessage(content="late")], run_id=run.run_id, fence=("w1", 1)
        )
    with pytest.raises(LeaseLostError):
        await store.finish_run(
            run.run_id, fence=("w1", 1), status=RunStatus.COMPLETED, error=None, usage=Usage()
        )
    with pytest.raises(LeaseLostError):
        await store.start_run(run.run_id, 1, owner="w1")
    renewal = await store.renew_leases("w1", {run.run_id: 1}, 300)

    assert fenced == {run.run_id}
    assert lost.value.run_id == run.run_id and lost.value.code == "lease_lost"
    assert renewal.lost == [run.run_id] and renewal.cancel_requested == {}
    assert await store.read_events(run.run_id) == events_before
    assert await store.get_messages(run.session_id) == []
    assert await get(store, run.run_id) == before
    # The run is claimable again, and its new owner's writes land.
    [again] = await store.claim_runs("w2", limit=1, lease_seconds=300)
    assert (again.epoch, again.status) == (3, RunStatus.RUNNING)
    fence = {run.run_id: ("w2", 3)}
    assert await store.append_events(tokens(run, 1, first_seq=4), fences=fence) == set()
    await store.append_messages(
        run.session_id, [UserMessage(content="ok")], run_id=run.run_id, fence=("w2", 3)
    )
    assert len(await store.get_messages(run.session_id)) == 1


async def test_a_stale_fence_leaves_only_its_run_out_of_a_batch(store: SqlStore) -> None:
    stale = await taken_over(store)
    fresh = await owned_run(store, "w1")
    batch = [*tokens(stale, 2, first_seq=4), *tokens(fresh, 3)]
    fences = {stale.run_id: ("w1", 1), fresh.run_id: ("w1", 1)}

    left_out = await store.append_events(batch, fences=fences, reserve=5)

    assert left_out == {stale.run_id}
    stored = await raw_rows(
        store,
        sa.select(run_events.c.seq, run_events.c.epoch)
        .where(run_events.c.run_id == fresh.run_id)
        .order_by(run_events.c.seq),
    )
    assert [tuple(row) for row in stored] == [(1, 1), (2, 1), (3, 1)]  # under its fence's epoch
    [row] = await raw_rows(
        store,
        sa.select(runs.c.last_seq, runs.c.seq_reserved).where(runs.c.run_id == fresh.run_id),
    )
    assert tuple(row) == (3, 3 + 5)


async def test_a_finish_needs_both_the_owner_and_the_epoch_of_its_fence(store: SqlStore) -> None:
    run = await taken_over(store)  # epoch 2 now
    [again] = await store.claim_runs("w1", limit=1, lease_seconds=300)  # w1 again: epoch 3
    assert again.epoch == 3
    for fence in (("w1", 1), ("w2", 3)):  # its old claim's epoch; someone else at this epoch
        with pytest.raises(LeaseLostError) as lost:
            await store.finish_run(
                run.run_id, fence=fence, status=RunStatus.COMPLETED, error=None, usage=Usage()
            )
        assert lost.value.run_id == run.run_id
    assert (await get(store, run.run_id)).status is RunStatus.RUNNING


async def test_a_finished_run_keeps_no_owner_lease_or_place_in_a_queue(store: SqlStore) -> None:
    owned = await owned_run(store, "w1")
    queued = a_run(owned.session_id)
    await store.reserve_run(queued, queue=True)
    # Ended unfenced while it waits behind the active run: it leaves the queue.
    await store.finish_run(
        queued.run_id, fence=None, status=RunStatus.ERROR, error="x", usage=Usage()
    )
    await store.finish_run(
        owned.run_id, fence=("w1", 1), status=RunStatus.COMPLETED, error=None, usage=Usage()
    )
    columns = (runs.c.owner, runs.c.lease_expires_at, runs.c.queued, runs.c.queue_order)
    for run_id in (owned.run_id, queued.run_id):
        [row] = await raw_rows(store, sa.select(*columns).where(runs.c.run_id == run_id))
        assert tuple(row) == (None, None, False, None)


async def test_events_carry_the_epoch_they_were_written_under(store: SqlStore) -> None:
    run = await taken_over(store)
    [again] = await store.claim_runs("w2", limit=1, lease_seconds=300)
    await store.append_events(tokens(run, 1, first_seq=4), fences={run.run_id: ("w2", again.epoch)})

    rows = await raw_rows(
        store,
        sa.select(run_events.c.seq, run_events.c.type, run_events.c.epoch)
        .where(run_events.c.run_id == run.run_id)
        .order_by(run_events.c.seq),
    )

    assert [tuple(row) for row in rows] == [
        (1, "token", 1),
        (2, "token", 1),
        (3, "run_recovered", 2),
        (4, "token", 3),
    ]


async def test_fences_of_many_runs_are_checked_in_chunks(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite checks fences with statements of a fixed number of run_ids (padded to a power of
    # two, at most _DIRECT_MOST a statement): 7 runs make a chunk of 4 and one of 3 padded to
    # 4. A failed fence in either chunk leaves only its run out.
    monkeypatch.setattr(fencing, "_DIRECT_MOST", 4)
    owned = [await owned_run(store, "w1") for _ in range(7)]
    ordered = sorted(owned, key=lambda run: run.run_id)
    stale = {ordered[i].run_id for i in (0, 4, 6)}  # first of each chunk, the padded one's last
    fences = {run.run_id: ("w9" if run.run_id in stale else "w1", 1) for run in owned}
    batch = [event for run in owned for event in tokens(run, 2)]

    left_out = await store.append_events(batch, fences=fences, reserve=5)

    assert left_out == stale
    for run in owned:
        stored = [e.seq for e in await store.read_events(run.run_id)]
        row = await get(store, run.run_id)
        if run.run_id in stale:
            assert (stored, row.last_seq, row.last_event_at) == ([], 0, None)
        else:
            assert (stored, row.last_seq) == ([1, 2], 2)
            last = [event for event in batch if event.run_id == run.run_id][-1]
            assert row.last_event_at == last.ts  # read back as written, in UTC
    [reserved] = await raw_rows(
        store, sa.select(runs.c.seq_reserved).where(runs.c.run_id == ordered[1].run_id)
    )
    assert reserved[0] == 2 + 5


async def test_one_runs_duplicate_seq_leaves_only_that_run_out(store: SqlStore) -> None:
    clash, fine, unfenced = [await owned_run(store, "w1") for _ in range(3)]
    await store.append_events(tokens(clash, 2), fences={clash.run_id: ("w1", 1)})
    doubled = await owned_run(store, "w1")
    fences = {run.run_id: ("w1", 1) for run in (clash, fine, doubled)}
    batch = [
        *tokens(fine, 3),
        *tokens(clash, 2, first_seq=2),  # seq 2 is stored already
        *tokens(unfenced, 2),
        *tokens(doubled, 1),
        *tokens(doubled, 1),  # one seq twice in the batch
    ]

    left_out = await store.append_events(batch, fences=fences)

    assert left_out == {clash.run_id, doubled.run_id}
    assert [e.seq for e in await store.read_events(fine.run_id)] == [1, 2, 3]
    assert [e.seq for e in await store.read_events(unfenced.run_id)] == [1, 2]
    assert [e.seq for e in await store.read_events(clash.run_id)] == [1, 2]
    assert await store.read_events(doubled.run_id) == []
    assert (await get(store, fine.run_id)).last_seq == 3
    assert (await get(store, clash.run_id)).last_seq == 2


async def test_a_seq_stored_already_leaves_that_run_out_when_it_is_alone(store: SqlStore) -> None:
    """No other run's rows to stumble on: the run's own stored seq is what is found."""
    run = await owned_run(store, "w1")
    await store.append_events(tokens(run, 2), fences={run.run_id: ("w1", 1)})

    left_out = await store.append_events(
        tokens(run, 2, first_seq=2), fences={run.run_id: ("w1", 1)}
    )

    assert left_out == {run.run_id}
    assert [e.seq for e in await store.read_events(run.run_id)] == [1, 2]


async def test_a_run_its_owner_finished_is_not_reported_lost(store: SqlStore) -> None:
    finished = await owned_run(store, "w1")
    taken = await owned_run(store, "w1", lease_seconds=0)
    await store.finish_run(
        finished.run_id, fence=("w1", 1), status=RunStatus.COMPLETED, error=None, usage=Usage()
    )
    [swept] = await store.sweep("sweeper", SweepPolicy(False, 1, 10))  # ends it, epoch 2
    assert swept.status is RunStatus.ERROR

    renewal = await store.renew_leases("w1", {finished.run_id: 1, taken.run_id: 1}, 300)

    assert renewal.lost == [taken.run_id], "ended by someone else: lost; by itself: done"
    [row] = await raw_rows(
        store, sa.select(runs.c.lease_expires_at).where(runs.c.run_id == finished.run_id)
    )
    assert row.lease_expires_at is None, "an ended run's lease is not renewed"
    assert await store.renew_leases("w1", {}, 300) == Renewal(cancel_requested={}, lost=[])


# Leases in database time


async def test_leases_are_database_now_plus_the_lease(store: SqlStore) -> None:
    await ready_run(store)
    [run] = await store.claim_runs("w1", limit=1, lease_seconds=3600)

    [row] = await raw_rows(
        store,
        sa.select(runs.c.lease_expires_at, dbtime.now(store.dialect.name).label("now")).where(
            runs.c.run_id == run.run_id
        ),
    )

    ahead = (row.lease_expires_at - row.now).total_seconds()
    assert 3500 < ahead <= 3600, ahead


async def test_an_expired_lease_is_swept_and_a_live_one_is_not(store: SqlStore) -> None:
    live = await owned_run(store, "w1", lease_seconds=3600)
    expired = await owned_run(store, "w1", lease_seconds=0)

    swept = await store.sweep("sweeper", REQUEUE)

    assert [run.run_id for run in swept] == [expired.run_id]
    assert (await get(store, live.run_id)).status is RunStatus.RUNNING
    renewal = await store.renew_leases("w1", {live.run_id: 1, expired.run_id: 1}, 3600)
    assert renewal.lost == [expired.run_id]
    assert await store.sweep("sweeper", REQUEUE) == []


# Wake-ups


async def test_a_run_queued_behind_a_ready_run_wakes_the_workers_again(store: SqlStore) -> None:
    """Queueing locks the active run FOR SHARE, and a claim skips locked rows: a claim at that
    moment misses the ready run, so the queueing wakes the workers to look again."""
    wakeups = store.wakeups()
    try:
        session = await new_session(store)
        await store.reserve_run(a_run(session.session_id), queue=False)
        assert await wakeups.wait(10) is True  # the ready run itself
        while await wakeups.wait(0.01):
            pass
        await store.reserve_run(a_run(session.session_id), queue=True)
        assert await wakeups.wait(10) is True
    finally:
        await wakeups.aclose()


async def test_a_ready_run_wakes_a_subscriber_of_the_store(store: SqlStore) -> None:
    wakeups = store.wakeups()
    try:
        assert await wakeups.wait(0.01) is False
        session = await new_session(store)
        active = a_run(session.session_id)
        await store.reserve_run(active, queue=False, owner="w1", lease_seconds=300)
        await store.reserve_run(a_run(session.session_id), queue=True)
        assert await wakeups.wait(0.01) is False, "neither an owned nor a queued run is ready"

        await store.finish_run(
            active.run_id, fence=("w1", 1), status=RunStatus.COMPLETED, error=None, usage=Usage()
        )
        assert await wakeups.wait(10) is True, "the queued run became ready"
        await ready_run(store)
        assert await wakeups.wait(10) is True
    finally:
        await wakeups.aclose()


async def test_postgres_notify_wakes_another_stores_subscriber(
    postgres_store: SqlStore, postgres_head_url: str
) -> None:
    other = SqlStore(postgres_head_url)
    await other.start()
    wakeups = other.wakeups()
    try:
        # Until its LISTEN is in place a notification may pass unheard: wait for one heard.
        for _ in range(100):
            await ready_run(postgres_store)
            if await wakeups.wait(0.2):
                break
        else:
            pytest.fail("no notification reached the other store")
        while await wakeups.wait(0.01):
            pass
        await ready_run(postgres_store)
        assert await wakeups.wait(10) is True
    finally:
        await wakeups.aclose()
        await other.aclose()


# Workers and the queue's figures


async def test_workers_rows_heartbeats_and_stop(store: SqlStore) -> None:
    await store.register_worker(
        "h:1:a", host="h", pid=1, boot_id="b", pid_namespace="4026", kind="worker", concurrency=8
    )
    await store.register_worker(
        "h:2:b", host="h", pid=2, boot_id=None, pid_namespace=None, kind="cli", concurrency=1
    )

    await store.worker_heartbeat("h:1:a", active_runs=3, claims=10, takeovers=2, fenced_writes=1)
    await store.stop_worker("h:2:b")

    [alive] = await store.list_workers(lease_seconds=10)
    assert (alive.worker_id, alive.host, alive.pid, alive.boot_id, alive.pid_namespace) == (
        "h:1:a",
        "h",
        1,
        "b",
        "4026",
    )
    assert (alive.kind, alive.concurrency, alive.alive) == ("worker", 8, True)
    assert (alive.active_runs, alive.claims, alive.takeovers, alive.fenced_writes) == (3, 10, 2, 1)
    assert alive.last_heartbeat_at >= alive.started_at
    everyone = await store.list_workers(lease_seconds=10, include_stopped=True)
    assert [w.worker_id for w in everyone] == ["h:1:a", "h:2:b"]
    stopped = await store.get_worker("h:2:b")
    assert stopped is not None and stopped.stopped_at is not None and stopped.alive is False
    # Not alive once its last heartbeat is older than the lease (a lease in the past here).
    late = await store.get_worker("h:1:a", lease_seconds=-60)
    assert late is not None and late.alive is False
    assert await store.get_worker("nobody") is None


async def test_queue_stats_count_ready_queued_and_running(store: SqlStore) -> None:
    empty = await store.queue_stats()
    assert (empty.pending, empty.ready, empty.running, empty.oldest_pending_age) == (0, 0, 0, None)
    ready = await ready_run(store)
    await store.reserve_run(a_run(ready.session_id), queue=True)
    await ready_run(store)
    await owned_run(store, "w1")
    session = await new_session(store)  # claimed, not started yet: a worker holds it
    await store.reserve_run(a_run(session.session_id), queue=False, owner="w2", lease_seconds=60)
    done = await owned_run(store, "w1")
    await store.finish_run(
        done.run_id, fence=("w1", 1), status=RunStatus.COMPLETED, error=None, usage=Usage()
    )

    stats = await store.queue_stats()

    assert (stats.pending, stats.ready, stats.running) == (3, 2, 2)
    assert stats.oldest_pending_age is not None and stats.oldest_pending_age >= 0


async def test_a_listener_whose_connection_is_killed_reconnects(
    postgres_store: SqlStore, postgres_head_url: str
) -> None:
    other = SqlStore(postgres_head_url)
    await other.start()
    wakeups = other.wakeups()
    database = sa.make_url(postgres_head_url).database
    kill = sa.text(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = :db AND query LIKE 'LISTEN%'"
    )
    try:
        for _ in range(100):  # until its LISTEN is in place
            await ready_run(postgres_store)
            if await wakeups.wait(0.2):
                break
        killed = await postgres_store.write(lambda conn: conn.execute(kill, {"db": database}).all())
        assert killed, "the listener's backend was found and terminated"
        while await wakeups.wait(0.01):
            pass
        wakeups.take_hints()  # the runs' own, heard before the kill
        # Back after a reconnect: its wake-up says notifications may have been missed (a hint
        # that names no run: claim), and new ones are heard again.
        assert await wakeups.wait(30) is True
        assert wakeups.take_hints() == [""]
        for _ in range(100):
            await ready_run(postgres_store)
            if await wakeups.wait(0.2):
                break
        else:
            pytest.fail("no notification after the reconnect")
    finally:
        await wakeups.aclose()
        await other.aclose()


async def test_a_sub_agent_is_reserved_only_under_its_parents_fence(store: SqlStore) -> None:
    """Review finding 5: a parent taken over (epoch bumped) cannot reserve a child."""
    parent = await owned_run(store, "w1")
    child_session = await new_session(store)
    stale = a_run(child_session.session_id, parent_run_id=parent.run_id)
    await store.sweep("w2", REQUEUE, dead_owners=["w1"])  # taken over: epoch 2, ready again

    with pytest.raises(LeaseLostError):
        await store.reserve_run(
            stale, queue=False, owner="w1", lease_seconds=60, parent_fence=("w1", 1)
        )
    assert await store.get_run(stale.run_id) is None

    [claimed] = await store.claim_runs("w2", limit=1, lease_seconds=60)
    child = a_run(child_session.session_id, parent_run_id=parent.run_id)
    reservation = await store.reserve_run(
        child, queue=False, owner="w2", lease_seconds=60, parent_fence=("w2", claimed.epoch)
    )
    assert reservation.run.epoch == 1


async def test_the_sweeper_retires_silent_workers_and_prunes_old_stopped_rows(
    store: SqlStore,
) -> None:
    """Review finding 11: a worker silent for longer than a lease that holds no run is marked
    stopped; a row stopped for longer than a day (24 h, the retention) is deleted."""
    for worker_id in ("dead", "holding", "alive", "long-stopped"):
        await store.register_worker(
            worker_id,
            host="h",
            pid=1,
            boot_id=None,
            pid_namespace=None,
            kind="worker",
            concurrency=1,
        )
    held = await owned_run(store, "holding", lease_seconds=300)
    name = store.dialect.name

    def age(conn: sa.Connection) -> None:
        silent = workers.c.worker_id.in_(["dead", "holding"])
        conn.execute(
            workers.update().where(silent).values(last_heartbeat_at=dbtime.later(name, -11))
        )
        conn.execute(
            workers.update()
            .where(workers.c.worker_id == "long-stopped")
            .values(stopped_at=dbtime.later(name, -24 * 3600 - 60))
        )

    await store.write(age)
    assert await store.sweep("alive", REQUEUE) == []

    rows = await store.list_workers(lease_seconds=10, include_stopped=True)
    stopped = {w.worker_id: w.stopped_at is not None for w in rows}
    assert stopped == {"dead": True, "holding": False, "alive": False}
    assert (await get(store, held.run_id)).status is RunStatus.RUNNING  # its lease holds


async def test_a_listener_connects_with_sqlalchemy_only_url_parameters(
    postgres_store: SqlStore, postgres_head_url: str
) -> None:
    """Review finding 7: the LISTEN connection took the URL's query string as is, and asyncpg
    sent ``prepared_statement_cache_size`` to the server, which refused the connection: the
    workers silently fell back to the poll. It must listen, and say so for /health."""
    url = sa.make_url(postgres_head_url).update_query_dict({"prepared_statement_cache_size": "0"})
    other = SqlStore(url.render_as_string(hide_password=False))
    await other.start()
    wakeups = other.wakeups()
    try:
        for _ in range(100):  # until its LISTEN is in place
            await ready_run(postgres_store)
            if await wakeups.wait(0.2):
                break
        else:
            pytest.fail(f"no notification reached the listener: {other.wakeups_problem()}")
        assert other.wakeups_problem() is None
    finally:
        await wakeups.aclose()
        await other.aclose()


async def test_a_listener_that_cannot_connect_says_why() -> None:
    signal = Signal()
    listener = PostgresWakeups(signal, {"host": "127.0.0.1", "port": 1, "user": "nobody"})
    try:
        while listener.problem == "connecting":
            await asyncio.sleep(0.01)
        assert listener.problem is not None
        assert listener.problem.startswith("not listening, polling instead")
    finally:
        await listener.aclose()
    assert listener.problem is None


async def test_a_reservations_wake_up_names_its_run(
    postgres_store: SqlStore, postgres_head_url: str
) -> None:
    # So that the worker whose turn it is claims it at once, and the others wait (the herd).
    other = SqlStore(postgres_head_url)
    await other.start()
    wakeups = other.wakeups()
    try:
        for _ in range(100):  # until its LISTEN is in place
            await ready_run(postgres_store)
            if await wakeups.wait(0.2):
                break
        while await wakeups.wait(0.05):
            pass
        wakeups.take_hints()
        run = await ready_run(postgres_store)
        assert await wakeups.wait(10) is True
        assert wakeups.take_hints() == [run.run_id]
        assert wakeups.take_hints() == []
    finally:
        await wakeups.aclose()
        await other.aclose()
