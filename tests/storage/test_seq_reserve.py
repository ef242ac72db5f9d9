"""The seq reservation behind pre-commit delivery (docs/ARCHITECTURE.md, "Durability window").

A write of run events with ``reserve=N`` stores, with the run's liveness columns, a mark N seqs
past the run's last stored seq; whatever the store appends for the run itself afterwards (a
sweeper's ``run_recovered``, a cancel's terminal event) comes after that mark, so no seq a client
may have seen is reused. A clean hand-back (its owner stored everything first) goes on from the
last stored seq instead.
"""

from __future__ import annotations

from culm.domain.models import RunStatus
from culm.storage.base import SweepPolicy
from culm.storage.sql import SqlStore
from tests.storage.queue_support import get, owned_run, tokens

REQUEUE = SweepPolicy(requeue=True, max_attempts=3, lease_seconds=10)
ERROR = SweepPolicy(requeue=False, max_attempts=3, lease_seconds=10)


async def test_recovery_appends_after_the_reserved_seqs(store: SqlStore) -> None:
    run = await owned_run(store, "w1", lease_seconds=0)
    await store.append_events(tokens(run, 3), fences={run.run_id: ("w1", 1)}, reserve=50)
    assert await store.last_event_seq(run.run_id) == 3  # stored, not reserved
    [swept] = await store.sweep("sweeper", REQUEUE)
    assert swept.status is RunStatus.PENDING
    events = await store.read_events(run.run_id)
    assert [(e.seq, e.type) for e in events] == [
        (1, "token"),
        (2, "token"),
        (3, "token"),
        (54, "run_recovered"),  # 3 + 50 reserved, then the next
    ]
    assert (await get(store, run.run_id)).last_seq == 54


async def test_an_ending_by_policy_comes_after_the_reservation_too(store: SqlStore) -> None:
    run = await owned_run(store, "w1", lease_seconds=0)
    await store.append_events(tokens(run, 2), fences={run.run_id: ("w1", 1)}, reserve=10)
    await store.sweep("sweeper", ERROR)
    events = await store.read_events(run.run_id)
    assert [(e.seq, e.type) for e in events][2:] == [(13, "run_recovered"), (14, "error")]


async def test_the_reservation_follows_each_write(store: SqlStore) -> None:
    run = await owned_run(store, "w1", lease_seconds=0)
    fences = {run.run_id: ("w1", 1)}
    await store.append_events(tokens(run, 2), fences=fences, reserve=10)
    await store.append_events(tokens(run, 2, first_seq=3), fences=fences, reserve=10)
    await store.sweep("sweeper", REQUEUE)
    assert [e.seq for e in await store.read_events(run.run_id)] == [1, 2, 3, 4, 15]


async def test_without_a_reservation_recovery_appends_right_after(store: SqlStore) -> None:
    run = await owned_run(store, "w1", lease_seconds=0)
    await store.append_events(tokens(run, 2), fences={run.run_id: ("w1", 1)})
    await store.sweep("sweeper", REQUEUE)
    assert [e.seq for e in await store.read_events(run.run_id)] == [1, 2, 3]


async def test_a_clean_hand_back_goes_on_from_the_last_stored_seq(store: SqlStore) -> None:
    run = await owned_run(store, "w1")
    await store.append_events(tokens(run, 2), fences={run.run_id: ("w1", 1)}, reserve=10)
    assert await store.release_runs("w1", {run.run_id: 1}, clean=True) == [run.run_id]
    events = await store.read_events(run.run_id)
    assert [(e.seq, e.type) for e in events][2:] == [(3, "run_recovered")]


async def test_a_hand_back_that_is_not_clean_goes_on_after_the_reservation(
    store: SqlStore,
) -> None:
    """Review finding 10: whether every shown event is stored is the caller's to say."""
    run = await owned_run(store, "w1")
    await store.append_events(tokens(run, 2), fences={run.run_id: ("w1", 1)}, reserve=10)
    assert await store.release_runs("w1", {run.run_id: 1}, clean=False) == [run.run_id]
    events = await store.read_events(run.run_id)
    assert [(e.seq, e.type) for e in events][2:] == [(13, "run_recovered")]
