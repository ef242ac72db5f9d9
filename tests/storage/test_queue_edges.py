"""Edges of the run queue's transactions (``storage/queue.py``) that the conformance suite does
not reach: the sweeper's safety net for stranded queues (and a promotion that races it), a
queued run ended while its session's slot is held, the start of a later attempt, and the
stamps of a start and a cancel in database time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from culm.domain.events import Cancelled
from culm.domain.models import RunStatus, Session, Usage, UserMessage
from culm.errors import LeaseLostError
from culm.storage import dbtime, ops
from culm.storage.queue import promote_stranded
from culm.storage.schema import runs
from culm.storage.sql import SqlStore
from culm.storage.wakeups import Wake
from tests.storage.queue_support import (
    a_run,
    get,
    new_session,
    owned_run,
    raw_connection,
    raw_rows,
    until_waiting,
)


async def stranded(store: SqlStore, session_id: str, queued: int) -> list[str]:
    """A session left with ``queued`` queued runs and no active one (its ready run ended
    without promoting the next, a state no transaction should leave): the queued run ids."""
    active = (await store.reserve_run(a_run(session_id), queue=False)).run
    waiting = [(await store.reserve_run(a_run(session_id), queue=True)).run for _ in range(queued)]

    def strand(conn: sa.Connection) -> None:
        conn.execute(runs.update().where(runs.c.run_id == active.run_id).values(status="completed"))

    await store.write(strand)
    return [run.run_id for run in waiting]


async def queue_columns(store: SqlStore, run_id: str) -> tuple[bool, float | None]:
    [row] = await raw_rows(
        store, sa.select(runs.c.queued, runs.c.queue_order).where(runs.c.run_id == run_id)
    )
    return row.queued, row.queue_order


async def database_now(store: SqlStore) -> datetime:
    name = store.dialect.name
    return await store.write(lambda conn: dbtime.read_now(conn, name))


# Reservations


async def test_a_reservation_returns_the_run_as_stored_whatever_it_was_handed(
    store: SqlStore,
) -> None:
    """The run handed in may carry queue state (a copy of a run read back): the reservation
    sets its own, and returns the run as it stored it (``epoch`` set)."""
    session = await new_session(store)
    sid = session.session_id
    stale = {"epoch": 4, "queued": True}
    ready = await store.reserve_run(a_run(sid, **stale), queue=False)
    queued = await store.reserve_run(a_run(sid, **stale), queue=True)
    owned = await store.reserve_run(
        a_run((await new_session(store)).session_id, **stale),
        queue=False,
        owner="w1",
        lease_seconds=60,
    )

    assert (ready.run.epoch, ready.run.queued) == (0, False)
    assert (queued.run.epoch, queued.run.queued) == (0, True)
    assert (owned.run.epoch, owned.run.queued, owned.run.owner) == (1, False, "w1")
    for reservation in (ready, queued, owned):
        assert await get(store, reservation.run.run_id) == reservation.run


async def test_a_reservation_for_an_owner_needs_its_lease(store: SqlStore) -> None:
    session = await new_session(store)
    run = a_run(session.session_id)

    with pytest.raises(ValueError, match="^reserve_run: lease_seconds is required with an owner$"):
        await store.reserve_run(run, queue=False, owner="w1")

    assert await store.get_run(run.run_id) is None


# The safety net: stranded queues


async def test_promote_stranded_readies_each_stranded_sessions_first_run(store: SqlStore) -> None:
    one, two, busy = [(await new_session(store)).session_id for _ in range(3)]
    first_of_one, second_of_one = await stranded(store, one, 2)
    [first_of_two] = await stranded(store, two, 1)
    await store.reserve_run(a_run(busy), queue=False)  # its queued run waits behind a ready one
    behind = (await store.reserve_run(a_run(busy), queue=True)).run
    wake = Wake(notify=store.dialect.name == "postgresql")

    promoted = await store.write(lambda conn: promote_stranded(conn, wake, limit=10))

    assert sorted(promoted) == sorted([one, two])
    assert wake.sent is True
    for run_id in (first_of_one, first_of_two):
        assert await queue_columns(store, run_id) == (False, None), "ready: out of the queue"
    for run_id in (second_of_one, behind.run_id):
        assert (await queue_columns(store, run_id))[0] is True
    again = Wake(notify=store.dialect.name == "postgresql")
    assert await store.write(lambda conn: promote_stranded(conn, again, limit=10)) == []
    assert again.sent is False


async def test_a_stranded_session_promoted_meanwhile_is_left_to_that_promotion_postgres(
    postgres_store: SqlStore, postgres_head_url: str
) -> None:
    """Another transaction promotes the first queued run of a stranded session while the
    safety net runs: the slot's unique index refuses the safety net's promotion of the second
    one, and it goes on with the other sessions."""
    store = postgres_store
    ids = [f"stranded-{i}" for i in range(4)]  # the raced one, "stranded-0", sorts first
    for session_id in ids:
        await store.create_session(
            Session(session_id=session_id, model="scripted:demo", workspace="/w")
        )
    queues = {session_id: await stranded(store, session_id, 2) for session_id in ids}
    raced_first, raced_second = queues[ids[0]]
    gate = await raw_connection(postgres_head_url)
    try:
        tx = gate.transaction()
        await tx.start()
        await gate.execute(
            "UPDATE runs SET queued = false, queue_order = NULL WHERE run_id = $1", raced_first
        )
        wake = Wake(notify=True)
        net = asyncio.create_task(store.write(lambda conn: promote_stranded(conn, wake, limit=10)))
        await until_waiting(gate, 1, unless=net)  # it waits for the raced run's row lock
        await tx.commit()
        promoted = await net
    finally:
        await gate.close()

    assert sorted(promoted) == ids[1:]
    assert await queue_columns(store, raced_first) == (False, None)
    assert (await queue_columns(store, raced_second))[0] is True
    for session_id in ids[1:]:
        first, second = queues[session_id]
        assert await queue_columns(store, first) == (False, None)
        assert (await queue_columns(store, second))[0] is True


# Promotion


async def test_a_queued_run_ended_while_the_slot_is_held_promotes_nothing(
    store: SqlStore,
) -> None:
    session = await new_session(store)
    sid = session.session_id
    active = (await store.reserve_run(a_run(sid), queue=False, owner="w1", lease_seconds=300)).run
    dropped, kept = [(await store.reserve_run(a_run(sid), queue=True)).run for _ in range(2)]

    await store.finish_run(
        dropped.run_id, fence=None, status=RunStatus.ERROR, error="x", usage=Usage()
    )

    assert await store.get_active_run(sid) == await get(store, active.run_id)
    assert (await queue_columns(store, kept.run_id))[0] is True
    await store.finish_run(
        active.run_id, fence=("w1", 1), status=RunStatus.COMPLETED, error=None, usage=Usage()
    )
    assert await queue_columns(store, kept.run_id) == (False, None), "ready: out of the queue"
    assert await store.get_active_run(sid) == await get(store, kept.run_id)


# Starts


async def test_a_later_attempt_stores_its_input_at_its_start_unless_one_did(
    store: SqlStore,
) -> None:
    """A run reserved for its owner at a later attempt (its first attempt's transcript may
    hold its input already) looks before storing the input; the first attempt need not."""
    session = await new_session(store)
    sid = session.session_id
    stored = a_run(sid, attempt=2, input="hello")
    await store.reserve_run(stored, queue=False, owner="w1", lease_seconds=300)
    hello = UserMessage(content="hello")
    await store.append_messages(sid, [hello], run_id=stored.run_id)  # by its first attempt

    assert await store.start_run(stored.run_id, 1, owner="w1", message=hello) is not None
    assert await store.get_messages(sid) == [hello], "not stored twice"

    await store.finish_run(
        stored.run_id, fence=("w1", 1), status=RunStatus.COMPLETED, error=None, usage=Usage()
    )
    fresh = a_run(sid, attempt=2, input="again")
    await store.reserve_run(fresh, queue=False, owner="w1", lease_seconds=300)
    again = UserMessage(content="again")
    assert await store.start_run(fresh.run_id, 1, owner="w1", message=again) is not None
    assert await store.get_messages(sid) == [hello, again], "none stored yet: stored"


async def test_a_start_by_a_stale_fence_names_its_run(store: SqlStore) -> None:
    session = await new_session(store)
    run = a_run(session.session_id)
    await store.reserve_run(run, queue=False, owner="w1", lease_seconds=300)

    with pytest.raises(LeaseLostError) as lost:
        await store.start_run(run.run_id, 1, owner="w2")

    assert lost.value.run_id == run.run_id


async def test_a_start_again_of_a_run_flagged_cancelled_leaves_it_to_its_owner(
    store: SqlStore,
) -> None:
    """A start repeated (a retry whose first try committed) after the running run was flagged
    for a cancel: the run is its owner's to end, not the repeated start's."""
    session = await new_session(store)
    run = a_run(session.session_id)
    await store.reserve_run(run, queue=False, owner="w1", lease_seconds=300)
    assert await store.start_run(run.run_id, 1, owner="w1") is not None
    await store.request_cancel(run.run_id, "user")

    assert await store.start_run(run.run_id, 1, owner="w1") is None

    assert (await get(store, run.run_id)).status is RunStatus.RUNNING
    assert await store.read_events(run.run_id) == []
    renewal = await store.renew_leases("w1", {run.run_id: 1}, 300)
    assert renewal.cancel_requested == {run.run_id: "user"}


async def test_a_run_cancelled_before_its_start_ends_there_in_database_time(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ended by its start, at the database's time (the host's clock here: years behind), and
    the session's next queued run becomes ready."""
    monkeypatch.setattr(ops, "utc_now", lambda: datetime(2001, 1, 1, tzinfo=UTC))
    session = await new_session(store)
    sid = session.session_id
    run = a_run(sid)
    await store.reserve_run(run, queue=False, owner="w1", lease_seconds=300)
    behind = (await store.reserve_run(a_run(sid), queue=True)).run
    await store.request_cancel(run.run_id, "user")
    before = await database_now(store)

    assert await store.start_run(run.run_id, 1, owner="w1") is None

    ended = await get(store, run.run_id)
    assert ended.status is RunStatus.CANCELLED
    assert ended.completed_at is not None and ended.completed_at >= before
    [event] = await store.read_events(run.run_id)
    assert isinstance(event, Cancelled) and event.ts == ended.completed_at
    assert await queue_columns(store, behind.run_id) == (False, None), "ready: out of the queue"
    assert await store.get_active_run(sid) == await get(store, behind.run_id)


async def test_a_start_is_stamped_in_database_time(store: SqlStore) -> None:
    session = await new_session(store)
    run = a_run(session.session_id)
    await store.reserve_run(run, queue=False, owner="w1", lease_seconds=300)
    before = await database_now(store)

    started = await store.start_run(run.run_id, 1, owner="w1")

    assert started is not None and started.started_at is not None
    assert started.started_at >= before, "to the sub-second, not the second"


@pytest.mark.parametrize("fenced", [True, False])
async def test_a_finish_stores_its_outcome_stamped_in_database_time(
    store: SqlStore, fenced: bool
) -> None:
    run = await owned_run(store, "w1")
    usage = Usage(prompt_tokens=7, completion_tokens=2, total_tokens=9)
    before = await database_now(store)

    await store.finish_run(
        run.run_id,
        fence=("w1", 1) if fenced else None,
        status=RunStatus.ERROR,
        error="boom",
        usage=usage,
    )

    ended = await get(store, run.run_id)
    assert (ended.status, ended.error, ended.usage) == (RunStatus.ERROR, "boom", usage)
    assert ended.completed_at is not None
    assert ended.completed_at >= before, "to the sub-second, not the second"


# Cancels


async def test_a_cancel_is_stamped_in_database_time_not_the_hosts(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host's clock may differ from the database's: the cancel's stamps (its terminal
    event, ``completed_at``) are the database's time, read in its transaction."""
    behind = datetime(2001, 1, 1, tzinfo=UTC)
    monkeypatch.setattr(ops, "utc_now", lambda: behind)  # this host's clock: years behind
    session = await new_session(store)
    ready = (await store.reserve_run(a_run(session.session_id), queue=False)).run
    before = await database_now(store)

    cancelled = await store.request_cancel(ready.run_id, "user")

    assert cancelled is not None and cancelled.status is RunStatus.CANCELLED
    assert cancelled.completed_at is not None
    assert cancelled.completed_at >= before, "the database's time, to the sub-second"
    [event] = await store.read_events(ready.run_id)
    assert isinstance(event, Cancelled)
    assert event.ts == cancelled.completed_at == cancelled.last_event_at
