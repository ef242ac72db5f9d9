"""The write transactions' building blocks (``storage/ops.py``) on every backend, where the
store-level tests leave them ambiguous: a session's queue order is the order runs were queued
in (jumps first), not the order they were created in."""

from __future__ import annotations

from datetime import timedelta

from culm.domain.models import Run, RunStatus, Usage
from culm.storage.sql import SqlStore
from tests.storage.queue_support import T0, a_run, new_session


async def _queued(store: SqlStore, session_id: str, seconds: int, *, jump: bool = False) -> Run:
    run = a_run(session_id, created_at=T0 + timedelta(seconds=seconds))
    return (await store.reserve_run(run, queue=True, jump_queue=jump)).run


async def test_a_sessions_queue_is_in_queue_order_not_creation_order(store: SqlStore) -> None:
    session = await new_session(store)
    sid = session.session_id
    active = a_run(sid)
    await store.reserve_run(active, queue=False, owner="w1", lease_seconds=300)
    # Created in the opposite order to the queue's (clients' clocks, retries).
    jumped_first = await _queued(store, sid, 40, jump=True)  # into an empty queue
    b = await _queued(store, sid, 30)
    c = await _queued(store, sid, 20)
    jumped_last = await _queued(store, sid, 10, jump=True)

    order = []
    current, epoch, owner = active, 1, "w1"
    while True:
        await store.finish_run(
            current.run_id,
            fence=(owner, epoch),
            status=RunStatus.COMPLETED,
            error=None,
            usage=Usage(),
        )
        claimed = await store.claim_runs("w2", limit=10, lease_seconds=300)
        if not claimed:
            break
        [current] = claimed
        order.append(current.run_id)
        epoch, owner = current.epoch, "w2"

    assert order == [run.run_id for run in (jumped_last, jumped_first, b, c)]


async def test_a_run_cancelled_before_any_event_ends_with_the_first_seq(store: SqlStore) -> None:
    session = await new_session(store)
    ready = (await store.reserve_run(a_run(session.session_id), queue=False)).run

    cancelled = await store.request_cancel(ready.run_id, "user")

    assert cancelled is not None and cancelled.last_seq == 1
    [event] = await store.read_events(ready.run_id)
    assert (event.type, event.seq) == ("cancelled", 1)
