"""The store conformance suite: one set of test bodies, run on every backend (``store`` fixture).

What the engine relies on from its database: sessions and transcripts, the one-active-run slot
(enforced by a partial unique index, so it holds across processes), the run queue, claims,
leases, cancel requests, crash recovery by compare-and-set, and gap-free event storage with
liveness columns folded from the events.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import create_async_engine

from culm.domain.events import (
    Cancelled,
    Complete,
    Error,
    ExecutionStarted,
    Gap,
    ReasoningToken,
    RoundCompleted,
    RunEvent,
    RunEventBase,
    RunnerProgress,
    RunRecovered,
    SubAgentCompleted,
    SubAgentEvent,
    SubAgentHeartbeat,
    SubAgentStarted,
    Token,
    TokenBudget,
    TokenBudgetUpdated,
    ToolComplete,
    ToolError,
    ToolStart,
    ToolToken,
)
from culm.domain.models import (
    AssistantMessage,
    Message,
    Run,
    RunStatus,
    RunTrigger,
    Session,
    SessionKind,
    ToolCall,
    ToolPhase,
    ToolResultMessage,
    Usage,
    UserMessage,
)
from culm.domain.time import new_id, utc_now
from culm.errors import AlreadyRunningError, SessionBusyError
from culm.storage.base import Orphan, Reservation
from culm.storage.schema import messages as messages_table
from culm.storage.sql import SqlStore

T0 = datetime(2026, 11, 21, 8, 0, 0, 123456, tzinfo=UTC)
WORKER = Path(__file__).with_name("reserve_worker.py")


# Builders


def lease() -> datetime:
    return utc_now() + timedelta(minutes=5)


def a_session(**fields: Any) -> Session:
    values: dict[str, Any] = {"session_id": new_id(), "model": "scripted:demo", "workspace": "/w"}
    return Session(**(values | fields))


def a_run(session_id: str, **fields: Any) -> Run:
    return Run(
        **({"run_id": new_id(), "session_id": session_id, "model": "scripted:demo"} | fields)
    )


async def new_session(store: SqlStore, **fields: Any) -> Session:
    session = a_session(**fields)
    await store.create_session(session)
    return session


async def reserve(
    store: SqlStore,
    session_id: str,
    *,
    owner: str = "w1",
    queue: bool = False,
    jump_queue: bool = False,
    **fields: Any,
) -> Reservation:
    run = a_run(session_id, **fields)
    return await store.reserve_run(
        run, owner=owner, lease_expires_at=lease(), queue=queue, jump_queue=jump_queue
    )


async def running_run(store: SqlStore, owner: str = "w1") -> Run:
    """A run that ``owner`` reserved and claimed, on a fresh session."""
    session = await new_session(store)
    run = (await reserve(store, session.session_id, owner=owner)).run
    claimed = await store.claim_run(
        run.run_id, owner=owner, lease_expires_at=lease(), started_at=utc_now()
    )
    assert claimed is not None
    return claimed


async def finish(store: SqlStore, run_id: str, status: RunStatus = RunStatus.COMPLETED) -> bool:
    return await store.finish_run(
        run_id, status=status, error=None, usage=Usage(), completed_at=utc_now()
    )


def stamp(run: Run, events: Sequence[RunEventBase], *, first_seq: int = 1) -> list[RunEvent]:
    return [
        event.stamped(
            seq=first_seq + i,
            run_id=run.run_id,
            session_id=run.session_id,
            ts=T0 + timedelta(seconds=first_seq + i),
        )
        for i, event in enumerate(events)
    ]


def tokens(run: Run, count: int, *, first_seq: int = 1) -> list[RunEvent]:
    return stamp(run, [Token(content=f"t{i}") for i in range(count)], first_seq=first_seq)


async def get(store: SqlStore, run_id: str) -> Run:
    run = await store.get_run(run_id)
    assert run is not None
    return run


async def orphan_of(store: SqlStore, run_id: str) -> Orphan:
    """The run as ``list_orphan_candidates`` shows it (with its owner and lease)."""
    found = [
        o for o in await store.list_orphan_candidates(exclude_owner="") if o.run.run_id == run_id
    ]
    assert len(found) == 1, f"{run_id} is not an orphan candidate"
    return found[0]


async def raw_rows(store: SqlStore, query: sa.Select[Any]) -> list[sa.Row[Any]]:
    """Rows the store does not expose through its API, read on a connection of our own."""
    engine = create_async_engine(store.dialect.url)
    try:
        async with engine.connect() as conn:
            return list(await conn.execute(query))
    finally:
        await engine.dispose()


def is_utc(value: datetime | None) -> bool:
    return value is not None and value.tzinfo is not None and value.utcoffset() == timedelta(0)


# Sessions


async def test_session_round_trip(store: SqlStore) -> None:
    parent = await new_session(store)
    session = a_session(
        kind=SessionKind.CHILD,
        parent_session_id=parent.session_id,
        system_prompt="You are terse.",
        tools=("bash", "read_file"),
        metadata={"title": "ünïcode ✓", "nested": {"n": [1, 2.5, None, True]}},
        created_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=5))),
    )
    await store.create_session(session)

    got = await store.get_session(session.session_id)
    assert got == session
    assert got is not None and is_utc(got.created_at)
    assert got.created_at == datetime(2026, 1, 1, 22, 4, 5, 678901, tzinfo=UTC)
    assert await store.get_session(new_id()) is None


async def test_list_sessions_newest_first_with_limit(store: SqlStore) -> None:
    made = [await new_session(store, created_at=T0 + timedelta(minutes=i)) for i in range(5)]
    newest_first = [s.session_id for s in reversed(made)]

    assert [s.session_id for s in await store.list_sessions()] == newest_first
    assert [s.session_id for s in await store.list_sessions(limit=2)] == newest_first[:2]


async def test_delete_session_cascades(store: SqlStore) -> None:
    session, other = await new_session(store), await new_session(store)
    for s in (session, other):
        run = (await reserve(store, s.session_id)).run
        await store.append_messages(s.session_id, [UserMessage(content="hi")], run_id=run.run_id)
        await store.append_events(tokens(run, 3))
        await finish(store, run.run_id)
    doomed = (await store.list_runs(session_id=session.session_id))[0]

    assert await store.delete_session(session.session_id) is True

    assert await store.get_session(session.session_id) is None
    assert await store.get_messages(session.session_id) == []
    assert await store.list_runs(session_id=session.session_id) == []
    assert await store.get_run(doomed.run_id) is None
    assert await store.read_events(doomed.run_id) == []
    assert await store.last_event_seq(doomed.run_id) == 0
    # The other session is untouched.
    assert await store.get_session(other.session_id) == other
    assert len(await store.get_messages(other.session_id)) == 1
    [kept] = await store.list_runs(session_id=other.session_id)
    assert len(await store.read_events(kept.run_id)) == 3
    # Deleting again (or an unknown id) reports that nothing was there.
    assert await store.delete_session(session.session_id) is False
    assert await store.delete_session(new_id()) is False


@pytest.mark.parametrize("claimed", [False, True], ids=["pending", "running"])
async def test_delete_refused_while_a_run_holds_the_slot(store: SqlStore, claimed: bool) -> None:
    session = await new_session(store)
    run = (await reserve(store, session.session_id)).run
    if claimed:
        await store.claim_run(run.run_id, owner="w1", lease_expires_at=lease(), started_at=T0)

    with pytest.raises(SessionBusyError) as busy:
        await store.delete_session(session.session_id)
    assert (busy.value.session_id, busy.value.run_id) == (session.session_id, run.run_id)
    assert await store.get_session(session.session_id) == session
    assert await store.get_run(run.run_id) is not None

    await finish(store, run.run_id)
    assert await store.delete_session(session.session_id) is True


# Messages


async def test_messages_append_and_read_in_order(store: SqlStore) -> None:
    session = await new_session(store)
    run = (await reserve(store, session.session_id)).run
    first: list[Message] = [UserMessage(content="list the files")]
    second: list[Message] = [
        AssistantMessage(
            content="",
            reasoning="I should look.",
            reasoning_signature="sig",
            tool_calls=(ToolCall(id="c1", name="bash", arguments='{"cmd": "ls"}'),),
        ),
        ToolResultMessage(tool_call_id="c1", tool_name="bash", content="a.txt\n", is_error=False),
        AssistantMessage(content="There is a.txt."),
    ]
    await store.append_messages(session.session_id, first, run_id=None)
    await store.append_messages(session.session_id, second, run_id=run.run_id)
    await store.append_messages(session.session_id, [], run_id=run.run_id)

    assert await store.get_messages(session.session_id) == first + second
    rows = await raw_rows(
        store,
        sa.select(messages_table.c.idx, messages_table.c.run_id, messages_table.c.role)
        .where(messages_table.c.session_id == session.session_id)
        .order_by(messages_table.c.idx),
    )
    assert [tuple(row) for row in rows] == [
        (0, None, "user"),
        (1, run.run_id, "assistant"),
        (2, run.run_id, "tool"),
        (3, run.run_id, "assistant"),
    ]
    assert await store.get_messages(new_id()) == []


# The active-run slot and the queue


async def test_reserve_run_takes_the_free_slot(store: SqlStore) -> None:
    session = await new_session(store)
    run = a_run(session.session_id, trigger=RunTrigger.CLI, input="hello", created_at=T0)

    reservation = await store.reserve_run(run, owner="w1", lease_expires_at=lease(), queue=False)

    assert reservation == Reservation(run=run, active_run_id=None)
    assert await store.get_run(run.run_id) == run
    assert await store.get_active_run(session.session_id) == run


@pytest.mark.parametrize("claimed", [False, True], ids=["pending", "running"])
async def test_reserve_on_a_busy_session_is_refused(store: SqlStore, claimed: bool) -> None:
    session = await new_session(store)
    active = (await reserve(store, session.session_id)).run
    if claimed:
        await store.claim_run(active.run_id, owner="w1", lease_expires_at=lease(), started_at=T0)
    refused = a_run(session.session_id)

    with pytest.raises(AlreadyRunningError) as err:
        await store.reserve_run(refused, owner="w2", lease_expires_at=lease(), queue=False)

    assert (err.value.session_id, err.value.run_id) == (session.session_id, active.run_id)
    assert await store.get_run(refused.run_id) is None
    assert await store.get_active_run(session.session_id) == await get(store, active.run_id)


async def test_a_queued_run_waits_behind_the_active_one(store: SqlStore) -> None:
    session = await new_session(store)
    active = (await reserve(store, session.session_id)).run

    reservation = await reserve(store, session.session_id, owner="w2", queue=True)

    assert reservation.active_run_id == active.run_id
    assert reservation.run.queued is True
    stored = await get(store, reservation.run.run_id)
    assert (stored.status, stored.queued) == (RunStatus.PENDING, True)
    assert (await get(store, active.run_id)).queued is False
    assert await store.get_active_run(session.session_id) == await get(store, active.run_id)
    # A queued run is not claimable: it has no slot and no owner yet.
    claim = await store.claim_run(
        stored.run_id, owner="w2", lease_expires_at=lease(), started_at=T0
    )
    assert claim is None


async def test_promote_next_follows_queue_order_and_jump_queue(store: SqlStore) -> None:
    session = await new_session(store)
    sid = session.session_id
    first = (await reserve(store, sid)).run
    b = (await reserve(store, sid, queue=True)).run
    c = (await reserve(store, sid, queue=True)).run
    d = (await reserve(store, sid, queue=True, jump_queue=True)).run
    e = (await reserve(store, sid, queue=True, jump_queue=True)).run

    # The slot is taken: nothing moves.
    assert await store.promote_next(sid, owner="w9", lease_expires_at=lease()) is None

    order = []
    current = first
    while True:
        await finish(store, current.run_id)
        promoted = await store.promote_next(sid, owner="w2", lease_expires_at=lease())
        if promoted is None:
            break
        assert (promoted.status, promoted.queued) == (RunStatus.PENDING, False)
        assert await store.get_active_run(sid) == promoted
        claimed = await store.claim_run(
            promoted.run_id, owner="w2", lease_expires_at=lease(), started_at=T0
        )
        assert claimed is not None, "a promoted run is claimable by its new owner"
        order.append(promoted.run_id)
        current = promoted

    assert order == [e.run_id, d.run_id, b.run_id, c.run_id]
    assert await store.get_active_run(sid) is None


async def test_promote_next_without_a_queue_is_none(store: SqlStore) -> None:
    session = await new_session(store)
    assert (
        await store.promote_next(session.session_id, owner="w1", lease_expires_at=lease()) is None
    )


async def test_concurrent_promote_next_gives_the_run_to_one_owner(store: SqlStore) -> None:
    session = await new_session(store)
    sid = session.session_id
    first = (await reserve(store, sid)).run
    queued = [(await reserve(store, sid, queue=True)).run for _ in range(3)]
    await finish(store, first.run_id)

    results = await asyncio.gather(
        *(store.promote_next(sid, owner=f"w{i}", lease_expires_at=lease()) for i in range(10)),
        return_exceptions=True,
    )

    promoted = [r for r in results if r is not None]
    assert len(promoted) == 1, results
    assert isinstance(promoted[0], Run)
    assert promoted[0].run_id == queued[0].run_id
    owner = (await orphan_of(store, queued[0].run_id)).owner
    winner = results.index(promoted[0])
    assert owner == f"w{winner}", "the owner in the row is the caller that was told it won"


# Claims, leases, cancel, finish


async def test_claim_run_only_by_its_owner(store: SqlStore) -> None:
    session = await new_session(store)
    run = (await reserve(store, session.session_id, owner="w1")).run
    started = T0 + timedelta(seconds=1)

    assert (
        await store.claim_run(run.run_id, owner="w2", lease_expires_at=lease(), started_at=T0)
        is None
    )
    claimed = await store.claim_run(
        run.run_id, owner="w1", lease_expires_at=lease(), started_at=started
    )

    assert claimed is not None
    assert (claimed.status, claimed.started_at) == (RunStatus.RUNNING, started)
    assert await get(store, run.run_id) == claimed
    # Only a pending run can be claimed.
    again = await store.claim_run(run.run_id, owner="w1", lease_expires_at=lease(), started_at=T0)
    assert again is None
    assert (
        await store.claim_run(new_id(), owner="w1", lease_expires_at=lease(), started_at=T0) is None
    )


async def test_a_run_with_a_cancel_request_cannot_be_claimed(store: SqlStore) -> None:
    session = await new_session(store)
    run = (await reserve(store, session.session_id, owner="w1")).run

    await store.request_cancel(run.run_id, "user")

    assert (
        await store.claim_run(run.run_id, owner="w1", lease_expires_at=lease(), started_at=T0)
        is None
    )
    assert (await get(store, run.run_id)).status is not RunStatus.RUNNING


async def test_a_claim_appends_the_runs_first_message_once(store: SqlStore) -> None:
    session = await new_session(store)
    run = (await reserve(store, session.session_id, owner="w1")).run
    message = UserMessage(content="hello")

    async def claim(owner: str = "w1") -> Run | None:
        return await store.claim_run(
            run.run_id, owner=owner, lease_expires_at=lease(), started_at=T0, message=message
        )

    assert await claim(owner="w2") is None  # not claimed: nothing appended
    assert await store.get_messages(session.session_id) == []
    assert await claim() is not None
    assert await store.get_messages(session.session_id) == [message]
    assert await store.has_run_messages(run.run_id)
    # A later attempt (after a recovery re-queued it) does not append it again.
    orphan = await orphan_of(store, run.run_id)
    await store.recover_run(
        orphan, owner="w1", lease_expires_at=lease(), requeue=True, now=utc_now(), events=[]
    )
    assert await claim() is not None
    assert await store.get_messages(session.session_id) == [message]


async def test_renew_leases_extends_and_reports_cancel_requests(store: SqlStore) -> None:
    mine = [await running_run(store, "w1") for _ in range(3)]
    theirs = await running_run(store, "w2")
    await store.request_cancel(mine[0].run_id, "user")
    await store.request_cancel(theirs.run_id, "user")
    new_lease = utc_now() + timedelta(hours=1)

    ids = [r.run_id for r in (*mine, theirs)]
    cancelled = await store.renew_leases("w1", ids, new_lease)

    assert cancelled == [mine[0].run_id]
    for run in mine:
        assert (await orphan_of(store, run.run_id)).lease_expires_at == new_lease
    assert (await orphan_of(store, theirs.run_id)).lease_expires_at != new_lease
    assert await store.renew_leases("w1", [], new_lease) == []


async def test_cancelling_a_queued_run_ends_it_at_once(store: SqlStore) -> None:
    session = await new_session(store)
    active = (await reserve(store, session.session_id)).run
    queued = (await reserve(store, session.session_id, queue=True)).run
    # Events left from an earlier attempt: the cancel goes after them.
    await store.append_events(tokens(queued, 2))

    before = utc_now()
    result = await store.request_cancel(queued.run_id, "user asked")

    assert result is not None
    assert result == await get(store, queued.run_id)
    assert (result.status, result.queued, result.last_seq) == (RunStatus.CANCELLED, False, 3)
    assert result.completed_at is not None and result.completed_at >= before
    events = await store.read_events(queued.run_id)
    assert [e.seq for e in events] == [1, 2, 3]
    cancel = events[-1]
    assert isinstance(cancel, Cancelled)
    assert (cancel.reason, cancel.run_id, cancel.session_id) == (
        "user asked",
        queued.run_id,
        session.session_id,
    )
    assert result.last_event_at == cancel.ts
    # The active run is untouched and nothing gets promoted from the queue any more.
    assert await store.get_active_run(session.session_id) == await get(store, active.run_id)
    await finish(store, active.run_id)
    assert (
        await store.promote_next(session.session_id, owner="w1", lease_expires_at=lease()) is None
    )


async def test_cancel_racing_a_claim_never_ends_a_run_its_owner_runs(store: SqlStore) -> None:
    session = await new_session(store)
    for _ in range(20):
        run = (await reserve(store, session.session_id)).run
        claimed, _ = await asyncio.gather(
            store.claim_run(run.run_id, owner="w1", lease_expires_at=lease(), started_at=T0),
            store.request_cancel(run.run_id, "user"),
        )
        final = await get(store, run.run_id)
        if claimed is not None:
            # The owner runs it: the cancel must only be flagged for the owner to act on.
            assert final.status is RunStatus.RUNNING
            assert await store.renew_leases("w1", [run.run_id], lease()) == [run.run_id]
            await finish(store, run.run_id, RunStatus.CANCELLED)
        else:
            assert final.status is RunStatus.CANCELLED
        assert await store.get_active_run(session.session_id) is None


async def test_cancelling_a_running_run_only_flags_it(store: SqlStore) -> None:
    run = await running_run(store)
    await store.append_events(tokens(run, 2))

    first = await store.request_cancel(run.run_id, "user")
    second = await store.request_cancel(run.run_id, "again")

    assert first is not None and second is not None
    assert first.status is second.status is RunStatus.RUNNING
    assert await store.last_event_seq(run.run_id) == 2, "the owner writes the terminal event"
    assert await store.renew_leases("w1", [run.run_id], lease()) == [run.run_id]


async def test_cancelling_a_terminal_run_changes_nothing(store: SqlStore) -> None:
    run = await running_run(store)
    await store.append_events(tokens(run, 1))
    await finish(store, run.run_id)
    before = await get(store, run.run_id)

    assert await store.request_cancel(run.run_id, "late") == before
    assert await get(store, run.run_id) == before
    assert await store.last_event_seq(run.run_id) == 1
    assert await store.request_cancel(new_id(), "unknown") is None


async def test_finish_run_records_the_outcome_and_frees_the_slot(store: SqlStore) -> None:
    run = await running_run(store)
    usage = Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15, cache_read_tokens=3)
    done_at = T0 + timedelta(minutes=1)

    queued = await store.finish_run(
        run.run_id, status=RunStatus.ERROR, error="boom", usage=usage, completed_at=done_at
    )

    assert queued is False  # no run waits in the session's queue

    finished = await get(store, run.run_id)
    assert (finished.status, finished.error, finished.usage) == (RunStatus.ERROR, "boom", usage)
    assert finished.completed_at == done_at and is_utc(finished.completed_at)
    assert await store.get_active_run(run.session_id) is None
    assert await store.list_orphan_candidates(exclude_owner="") == []
    assert (await reserve(store, run.session_id)).active_run_id is None


async def test_finish_run_says_whether_runs_wait_in_the_queue(store: SqlStore) -> None:
    session = await new_session(store)
    active = (await reserve(store, session.session_id)).run
    await reserve(store, session.session_id, queue=True)
    other = await running_run(store)  # another session's queue is not this one's

    assert await finish(store, active.run_id) is True
    assert await finish(store, other.run_id) is False
    assert await finish(store, new_id()) is False


async def test_list_runs_filters_newest_first(store: SqlStore) -> None:
    s1, s2 = await new_session(store), await new_session(store)
    parent = (await reserve(store, s1.session_id, created_at=T0)).run
    old = [parent]
    for i in range(1, 4):
        await finish(store, old[-1].run_id)
        old.append((await reserve(store, s1.session_id, created_at=T0 + timedelta(seconds=i))).run)
    child = (
        await reserve(
            store, s2.session_id, parent_run_id=parent.run_id, created_at=T0 + timedelta(hours=1)
        )
    ).run

    def ids(runs: list[Run]) -> list[str]:
        return [r.run_id for r in runs]

    everything = [child, *reversed(old)]
    assert ids(await store.list_runs()) == ids(everything)
    assert ids(await store.list_runs(limit=2)) == ids(everything[:2])
    assert ids(await store.list_runs(session_id=s1.session_id)) == ids(list(reversed(old)))
    assert ids(await store.list_runs(status=RunStatus.PENDING)) == [child.run_id, old[-1].run_id]
    assert ids(await store.list_runs(status=RunStatus.COMPLETED, limit=2)) == [
        old[2].run_id,
        old[1].run_id,
    ]
    assert ids(await store.list_runs(parent_run_id=parent.run_id)) == [child.run_id]
    assert await store.list_runs(session_id=s2.session_id, status=RunStatus.COMPLETED) == []


# Crash recovery


async def test_orphan_candidates_are_slot_holders_of_other_owners(store: SqlStore) -> None:
    dead_running = await running_run(store, "dead")
    dead_pending = (await reserve(store, (await new_session(store)).session_id, owner="dead")).run
    mine = await running_run(store, "me")
    await reserve(store, dead_running.session_id, owner="dead", queue=True)  # queued: not
    finished = await running_run(store, "dead")
    await finish(store, finished.run_id)

    found = await store.list_orphan_candidates(exclude_owner="me")

    assert {o.run.run_id for o in found} == {dead_running.run_id, dead_pending.run_id}
    assert {o.owner for o in found} == {"dead"}
    assert all(is_utc(o.lease_expires_at) for o in found)
    everyone = await store.list_orphan_candidates(exclude_owner="")
    assert mine.run_id in {o.run.run_id for o in everyone}


async def test_recover_requeues_once(store: SqlStore) -> None:
    run = await running_run(store, "dead")
    started = ExecutionStarted(started_at=T0, attempt=1)
    await store.append_events(
        stamp(run, [started, RunnerProgress(round_count=1), Token(content="x")])
    )
    orphan = await orphan_of(store, run.run_id)
    now = utc_now()
    recovered_event = RunRecovered(previous_attempt=1, action="requeued")

    def recover() -> Any:
        return store.recover_run(
            orphan, owner="me", lease_expires_at=lease(), requeue=True, now=now,
            events=[recovered_event],
        )  # fmt: skip

    first, second = await recover(), await recover()

    assert first is not None and second is None
    assert (first.status, first.attempt, first.started_at) == (RunStatus.PENDING, 2, None)
    assert (first.last_seq, first.round_count, first.last_event_at) == (4, 1, now)
    assert first == await get(store, run.run_id)
    events = await store.read_events(run.run_id)
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert events[-1] == recovered_event.stamped(
        seq=4, run_id=run.run_id, session_id=run.session_id, ts=now
    )
    assert (await orphan_of(store, run.run_id)).owner == "me"
    claimed = await store.claim_run(
        run.run_id, owner="me", lease_expires_at=lease(), started_at=now
    )
    assert claimed is not None and claimed.attempt == 2


async def test_recover_ends_in_error_interrupted(store: SqlStore) -> None:
    run = await running_run(store, "dead")
    await store.append_events(tokens(run, 5))
    orphan = await orphan_of(store, run.run_id)
    now = utc_now()
    events = [
        RunRecovered(previous_attempt=1, action="errored"),
        Error(message="interrupted", code="interrupted"),
    ]

    ended = await store.recover_run(
        orphan, owner="me", lease_expires_at=lease(), requeue=False, now=now, events=events
    )
    again = await store.recover_run(
        orphan, owner="me", lease_expires_at=lease(), requeue=False, now=now, events=events
    )

    assert ended is not None and again is None
    assert (ended.status, ended.error, ended.completed_at) == (RunStatus.ERROR, "interrupted", now)
    assert (ended.last_seq, ended.attempt) == (7, 1)
    stored = await store.read_events(run.run_id)
    assert [(e.seq, e.type) for e in stored[-3:]] == [
        (5, "token"),
        (6, "run_recovered"),
        (7, "error"),
    ]
    assert await store.get_active_run(run.session_id) is None
    assert await store.list_orphan_candidates(exclude_owner="me") == []


@pytest.mark.parametrize("requeue", [False, True])
@pytest.mark.parametrize(
    ("terminal", "status", "error"),
    [
        (Error(message="boom", code="internal_error"), RunStatus.ERROR, "boom"),
        (Cancelled(reason="stop"), RunStatus.CANCELLED, None),
    ],
)
async def test_recovering_a_run_whose_terminal_event_is_stored_ends_it_as_that_says(
    store: SqlStore, requeue: bool, terminal: RunEventBase, status: RunStatus, error: str | None
) -> None:
    run = await running_run(store, "dead")
    usage = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
    rounds = [
        RoundCompleted(round=1, usage=usage, latency_ms=1, model="m"),
        RoundCompleted(round=2, usage=usage, latency_ms=1, model="m"),
    ]
    await store.append_events(stamp(run, [ExecutionStarted(started_at=T0, attempt=1), *rounds]))
    [ended_event] = stamp(run, [terminal], first_seq=4)
    await store.append_events([ended_event])
    orphan = await orphan_of(store, run.run_id)
    events = [RunRecovered(previous_attempt=1, action="errored")]

    ended = await store.recover_run(
        orphan, owner="me", lease_expires_at=lease(), requeue=requeue, now=utc_now(),
        events=events,
    )  # fmt: skip

    assert ended is not None and ended == await get(store, run.run_id)
    assert (ended.status, ended.error, ended.attempt) == (status, error, 1)
    assert (ended.usage, ended.completed_at, ended.last_seq) == (usage + usage, ended_event.ts, 4)
    assert [e.seq for e in await store.read_events(run.run_id)] == [1, 2, 3, 4]  # nothing added
    assert await store.get_active_run(run.session_id) is None
    assert await store.list_orphan_candidates(exclude_owner="") == []


async def test_a_completed_runs_usage_is_its_complete_events(store: SqlStore) -> None:
    run = await running_run(store, "dead")
    usage = Usage(prompt_tokens=7, completion_tokens=1, total_tokens=8)
    await store.append_events(stamp(run, [Complete(usage=usage, final_message="done")]))
    orphan = await orphan_of(store, run.run_id)
    ended = await store.recover_run(
        orphan, owner="me", lease_expires_at=lease(), requeue=True, now=utc_now(), events=[]
    )
    assert ended is not None
    assert (ended.status, ended.error, ended.usage) == (RunStatus.COMPLETED, None, usage)


async def test_owned_runs_are_the_owners_slot_holders(store: SqlStore) -> None:
    mine = await running_run(store, "me")
    reserved = (await reserve(store, (await new_session(store)).session_id, owner="me")).run
    await reserve(store, mine.session_id, owner="me", queue=True)  # queued: not
    await running_run(store, "other")
    finished = await running_run(store, "me")
    await finish(store, finished.run_id)

    owned = await store.list_owned_runs("me")

    assert {o.run.run_id for o in owned} == {mine.run_id, reserved.run_id}
    assert {o.owner for o in owned} == {"me"}
    assert all(is_utc(o.lease_expires_at) for o in owned)


async def test_recover_is_a_compare_and_set_on_what_was_seen(store: SqlStore) -> None:
    session = await new_session(store)
    run = (await reserve(store, session.session_id, owner="slow")).run
    orphan = await orphan_of(store, run.run_id)  # seen pending
    # Meanwhile its owner turns out to be alive and claims it.
    await store.claim_run(run.run_id, owner="slow", lease_expires_at=lease(), started_at=T0)

    result = await store.recover_run(
        orphan, owner="me", lease_expires_at=lease(), requeue=True, now=utc_now(), events=[]
    )

    assert result is None
    assert (await get(store, run.run_id)).status is RunStatus.RUNNING
    assert (await orphan_of(store, run.run_id)).owner == "slow"


async def test_a_requeued_run_whose_cancel_was_requested_ends_cancelled_on_claim(
    store: SqlStore,
) -> None:
    run = await running_run(store, "dead")
    await store.append_events(tokens(run, 2))
    await store.request_cancel(run.run_id, "user")  # flagged; then its owner dies
    orphan = await orphan_of(store, run.run_id)
    requeued = await store.recover_run(
        orphan, owner="me", lease_expires_at=lease(), requeue=True, now=utc_now(), events=[]
    )
    assert requeued is not None and requeued.status is RunStatus.PENDING

    claim = await store.claim_run(run.run_id, owner="me", lease_expires_at=lease(), started_at=T0)

    assert claim is None, "a cancel request is never lost by a recovery"
    ended = await get(store, run.run_id)
    assert ended.status is RunStatus.CANCELLED
    [cancel] = await store.read_events(run.run_id, after=2)
    assert isinstance(cancel, Cancelled) and (cancel.seq, cancel.reason) == (3, "user")
    assert await store.get_active_run(run.session_id) is None


async def test_release_runs_hands_back_the_owners_active_runs(store: SqlStore) -> None:
    running = await running_run(store, "w1")
    pending = (await reserve(store, (await new_session(store)).session_id, owner="w1")).run
    queued = (await reserve(store, running.session_id, owner="w1", queue=True)).run
    other = await running_run(store, "w2")
    done = await running_run(store, "w1")
    await finish(store, done.run_id)

    released = await store.release_runs("w1")

    assert sorted(released) == sorted([running.run_id, pending.run_id])
    for run_id in released:
        run = await get(store, run_id)
        assert (run.status, run.started_at, run.queued) == (RunStatus.PENDING, None, False)
        assert await store.get_active_run(run.session_id) == run, "it keeps the slot"
        assert (await orphan_of(store, run_id)).owner is None
    assert (await get(store, queued.run_id)).queued is True
    assert (await get(store, other.run_id)).status is RunStatus.RUNNING
    assert (await get(store, done.run_id)).status is RunStatus.COMPLETED
    assert await store.release_runs("w1") == []
    # A released run belongs to nobody: the next start recovers it.
    orphan = await orphan_of(store, running.run_id)
    recovered = await store.recover_run(
        orphan, owner="w3", lease_expires_at=lease(), requeue=True, now=utc_now(), events=[]
    )
    assert recovered is not None and recovered.attempt == 2


async def test_cancelling_a_released_run_ends_it_at_once(store: SqlStore) -> None:
    run = await running_run(store, "w1")
    await store.append_events(tokens(run, 4))
    await store.release_runs("w1")

    result = await store.request_cancel(run.run_id, "user")

    assert result is not None and result.status is RunStatus.CANCELLED
    assert [(e.seq, e.type) for e in await store.read_events(run.run_id, after=3)] == [
        (4, "token"),
        (5, "cancelled"),
    ]
    assert await store.get_active_run(run.session_id) is None


async def test_stranded_sessions_have_a_queue_but_no_active_run(store: SqlStore) -> None:
    busy, stranded, idle = [await new_session(store) for _ in range(3)]
    await reserve(store, busy.session_id)
    await reserve(store, busy.session_id, queue=True)
    holder = (await reserve(store, stranded.session_id)).run
    await reserve(store, stranded.session_id, queue=True)
    await reserve(store, stranded.session_id, queue=True)
    await reserve(store, idle.session_id)

    assert await store.list_stranded_sessions() == []
    await finish(store, holder.run_id)  # ... and its process dies before promoting the next
    assert await store.list_stranded_sessions() == [stranded.session_id]
    await store.promote_next(stranded.session_id, owner="w1", lease_expires_at=lease())
    assert await store.list_stranded_sessions() == []


async def test_has_run_messages(store: SqlStore) -> None:
    session = await new_session(store)
    run = (await reserve(store, session.session_id)).run
    await store.append_messages(session.session_id, [UserMessage(content="a")], run_id=None)
    assert await store.has_run_messages(run.run_id) is False

    await store.append_messages(session.session_id, [UserMessage(content="b")], run_id=run.run_id)

    assert await store.has_run_messages(run.run_id) is True
    assert await store.has_run_messages(new_id()) is False


# Run events


def one_of_each(child: Run) -> list[RunEventBase]:
    usage = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5, reasoning_tokens=1)
    child_ids = {"child_session_id": child.session_id, "child_run_id": child.run_id}
    return [
        ExecutionStarted(started_at=T0, attempt=1),
        RunnerProgress(round_count=1),
        Token(content="Hel"),
        ReasoningToken(content="hmm"),
        ToolStart(tool_call_id="c1", tool_name="bash", arguments={"cmd": "ls -la", "n": [1, 2]}),
        ToolToken(tool_call_id="c1", content="a.txt\n"),
        ToolComplete(tool_call_id="c1", tool_name="bash", result="a.txt", elapsed_ms=12),
        ToolError(tool_call_id="c2", tool_name="read_file", error="no such file", elapsed_ms=1),
        TokenBudgetUpdated(usage=TokenBudget(prompt_tokens=3, max_context_tokens=128_000)),
        RoundCompleted(round=1, usage=usage, latency_ms=250, model="scripted:demo"),
        SubAgentStarted(**child_ids, title="helper"),
        SubAgentEvent(**child_ids, event={"seq": 1, "type": "token", "content": "ü"}),
        SubAgentHeartbeat(**child_ids),
        SubAgentCompleted(**child_ids, status="completed"),
        RunRecovered(previous_attempt=1, action="requeued"),
        Gap(from_seq=1, to_seq=2),
        Cancelled(reason="user"),
        Error(message="boom", code="model_error"),
        Complete(usage=usage, final_message="Done — ✓"),
    ]


async def test_every_event_type_round_trips(store: SqlStore) -> None:
    run, child = await running_run(store), await running_run(store)
    events = stamp(run, one_of_each(child))

    await store.append_events(events)

    assert await store.read_events(run.run_id) == events
    assert all(is_utc(e.ts) for e in await store.read_events(run.run_id))
    assert await store.last_event_seq(run.run_id) == len(events)


async def test_read_events_after_and_limit(store: SqlStore) -> None:
    run = await running_run(store)
    events = tokens(run, 10)
    await store.append_events(events[:4])
    await store.append_events(events[4:])

    assert await store.read_events(run.run_id) == events
    assert await store.read_events(run.run_id, after=3, limit=4) == events[3:7]
    assert await store.read_events(run.run_id, after=8) == events[8:]
    assert await store.read_events(run.run_id, after=10) == []
    assert await store.read_events(run.run_id, after=99) == []
    assert await store.read_events(run.run_id, limit=0) == []
    assert await store.read_events(new_id()) == []
    assert await store.last_event_seq(new_id()) == 0


async def test_one_batch_may_hold_events_of_several_runs(store: SqlStore) -> None:
    a, b = await running_run(store), await running_run(store)
    ea, eb = tokens(a, 3), tokens(b, 2)

    await store.append_events([ea[0], eb[0], ea[1], eb[1], ea[2]])

    assert await store.read_events(a.run_id) == ea
    assert await store.read_events(b.run_id) == eb
    assert ((await get(store, a.run_id)).last_seq, (await get(store, b.run_id)).last_seq) == (3, 2)


async def test_liveness_columns_follow_the_events(store: SqlStore) -> None:
    run = await running_run(store)

    async def append(*events: RunEventBase) -> Run:
        first = await store.last_event_seq(run.run_id) + 1
        batch = stamp(run, events, first_seq=first)
        await store.append_events(batch)
        live = await get(store, run.run_id)
        assert (live.last_seq, live.last_event_at) == (batch[-1].seq, batch[-1].ts)
        assert is_utc(live.last_event_at)
        return live

    live = await append(ExecutionStarted(started_at=T0, attempt=1), RunnerProgress(round_count=1))
    assert (live.round_count, live.last_tool_name, live.last_tool_phase) == (1, None, None)

    live = await append(
        RunnerProgress(round_count=2), ToolStart(tool_call_id="c", tool_name="bash", arguments={})
    )
    assert (live.round_count, live.last_tool_name, live.last_tool_phase) == (
        2,
        "bash",
        ToolPhase.BEGIN,
    )

    live = await append(ToolToken(tool_call_id="c", content="..."))
    assert (live.round_count, live.last_tool_name, live.last_tool_phase) == (
        2,
        "bash",
        ToolPhase.BEGIN,
    )

    live = await append(ToolComplete(tool_call_id="c", tool_name="bash", result="", elapsed_ms=1))
    assert (live.last_tool_name, live.last_tool_phase) == ("bash", ToolPhase.FINISHED)

    live = await append(
        RunnerProgress(round_count=3),
        ToolStart(tool_call_id="d", tool_name="read_file", arguments={}),
        ToolError(tool_call_id="d", tool_name="read_file", error="nope", elapsed_ms=1),
        Token(content="sorry"),
    )
    assert (live.round_count, live.last_tool_name, live.last_tool_phase) == (
        3,
        "read_file",
        ToolPhase.ERROR,
    )


async def test_read_events_of_types_keeps_the_last_ones(store: SqlStore) -> None:
    run, child = await running_run(store), await running_run(store)
    ids = {"child_session_id": child.session_id, "child_run_id": child.run_id}
    events = stamp(
        run,
        [
            SubAgentStarted(**ids, title="1"),
            Token(content="a"),
            SubAgentCompleted(**ids, status="completed"),
            TokenBudgetUpdated(usage=TokenBudget(prompt_tokens=1)),
            SubAgentStarted(**ids, title="2"),
            TokenBudgetUpdated(usage=TokenBudget(prompt_tokens=2)),
            Token(content="b"),
        ],
    )
    await store.append_events(events)
    critical = ["sub_agent_started", "sub_agent_completed"]

    assert await store.read_events_of_types(run.run_id, critical, limit=10) == [
        events[0],
        events[2],
        events[4],
    ]
    assert await store.read_events_of_types(run.run_id, critical, limit=2) == [events[2], events[4]]
    budget = await store.read_events_of_types(run.run_id, ["token_budget_updated"], limit=1)
    assert budget == [events[5]]
    assert await store.read_events_of_types(run.run_id, ["complete"], limit=5) == []


async def test_timestamps_read_back_timezone_aware_utc(store: SqlStore) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2026, 6, 1, 12, 0, 0, 1, tzinfo=plus_two)
    session = await new_session(store, created_at=local)
    run = a_run(session.session_id, created_at=local)
    await store.reserve_run(run, owner="w1", lease_expires_at=local, queue=False)
    await store.claim_run(run.run_id, owner="w1", lease_expires_at=local, started_at=local)
    await store.append_events(
        [Token(content="x").stamped(seq=1, run_id=run.run_id, session_id=run.session_id, ts=local)]
    )
    orphan = await orphan_of(store, run.run_id)
    await store.finish_run(
        run.run_id, status=RunStatus.COMPLETED, error=None, usage=Usage(), completed_at=local
    )
    stored = await get(store, run.run_id)
    [event] = await store.read_events(run.run_id)
    got_session = await store.get_session(session.session_id)
    assert got_session is not None

    values = {
        "session.created_at": got_session.created_at,
        "run.created_at": stored.created_at,
        "run.started_at": stored.started_at,
        "run.completed_at": stored.completed_at,
        "run.last_event_at": stored.last_event_at,
        "event.ts": event.ts,
        "orphan.lease_expires_at": orphan.lease_expires_at,
    }
    for name, value in values.items():
        assert is_utc(value), f"{name} = {value!r}"
        assert value == local, name


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    count=st.integers(min_value=0, max_value=40),
    cuts=st.sets(st.integers(min_value=1, max_value=39)),
    after=st.integers(min_value=0, max_value=45),
    limit=st.none() | st.integers(min_value=0, max_value=45),
)
async def test_replay_is_exact_for_any_batching_and_range(
    store: SqlStore, count: int, cuts: set[int], after: int, limit: int | None
) -> None:
    run = a_run(new_id())  # events need no run row
    events = tokens(run, count)
    bounds = [0, *sorted(c for c in cuts if c < count), count]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        await store.append_events(events[lo:hi])

    expected = events[after:] if limit is None else events[after : after + limit]
    assert await store.read_events(run.run_id, after=after, limit=limit) == expected
    assert await store.read_events(run.run_id) == events
    assert await store.last_event_seq(run.run_id) == count


# Concurrency


async def test_fifty_concurrent_writers_neither_deadlock_nor_lock(store: SqlStore) -> None:
    contested = await new_session(store)
    runs = [await running_run(store) for _ in range(25)]

    async def write_events(run: Run) -> None:
        for batch in range(4):
            await store.append_events(tokens(run, 5, first_seq=batch * 5 + 1))

    async def try_reserve() -> str | None:
        try:
            return (await reserve(store, contested.session_id, owner="w2")).run.run_id
        except AlreadyRunningError as exc:
            return f"refused:{exc.run_id}"

    writers = [write_events(run) for run in runs]
    reservers = [try_reserve() for _ in range(25)]
    jobs: list[Any] = [job for pair in zip(writers, reservers, strict=True) for job in pair]
    results = await asyncio.wait_for(asyncio.gather(*jobs), timeout=30)

    claims = [r for r in results[1::2] if not r.startswith("refused:")]
    assert len(claims) == 1, results[1::2]
    winner = claims[0]
    assert results[1::2].count(f"refused:{winner}") == 24
    assert (await store.get_active_run(contested.session_id)) == await get(store, winner)
    for run in runs:
        assert [e.seq for e in await store.read_events(run.run_id)] == list(range(1, 21))
        assert (await get(store, run.run_id)).last_seq == 20


async def test_a_cancelled_write_is_done_whole_all_the_same(store: SqlStore) -> None:
    """The caller gets its CancelledError; the transaction is neither torn nor dropped, and
    the store takes the next write."""
    session = await new_session(store)
    batch: list[Message] = [UserMessage(content=str(i)) for i in range(50)]
    for steps in range(1, 5):  # cancel at different points of the write
        write = asyncio.create_task(store.append_messages(session.session_id, batch, run_id=None))
        for _ in range(steps):
            await asyncio.sleep(0)
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        async with asyncio.timeout(10):
            while len(await store.get_messages(session.session_id)) < 50 * steps:
                await asyncio.sleep(0.01)
    await store.append_messages(session.session_id, [UserMessage(content="end")], run_id=None)

    assert [m.content for m in await store.get_messages(session.session_id)] == [
        *[m.content for m in batch] * 4,
        "end",
    ]


async def _start_worker(url: str, owner: str, mode: str, attempts: int, sessions: list[str]) -> Any:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        url,
        owner,
        mode,
        str(attempts),
        *sessions,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
    if line.strip() != b"ready":
        _, err = await process.communicate()
        pytest.fail(f"worker {owner} did not start: {line!r} {err.decode()}")
    return process


async def _run_workers(
    store: SqlStore, mode: str, attempts: int, sessions: list[str]
) -> list[dict[str, list[Any]]]:
    url = store.dialect.url.render_as_string(hide_password=False)
    workers = [await _start_worker(url, f"p{i}", mode, attempts, sessions) for i in range(2)]
    outputs = await asyncio.wait_for(
        asyncio.gather(*(w.communicate(b"go\n") for w in workers)), timeout=50
    )
    results = []
    for worker, (out, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err.decode()
        result: dict[str, list[Any]] = json.loads(out)
        assert result["errors"] == [], result["errors"][:5]
        results.append(result)
    return results


@pytest.mark.slow
async def test_two_processes_hold_one_active_run_per_session(store: SqlStore) -> None:
    sessions = [(await new_session(store)).session_id for _ in range(8)]

    results = await _run_workers(store, "hold", 10, sessions)

    won = [tuple(w) for r in results for w in r["won"]]
    assert sorted(s for s, _ in won) == sorted(sessions), "exactly one winner per session"
    winner_of = dict(won)
    for r in results:
        for session_id, active in r["rejected"]:
            assert active == winner_of[session_id]
        for session_id, _, active in r["queued"]:
            assert active == winner_of[session_id]
    queued_count = sum(len(r["queued"]) for r in results)
    assert queued_count + sum(len(r["rejected"]) for r in results) == 2 * 10 * 8 - 8
    for session_id in sessions:
        active = await store.get_active_run(session_id)
        assert active is not None and active.run_id == winner_of[session_id]
        session_runs = await store.list_runs(session_id=session_id)
        assert sum(not r.queued for r in session_runs) == 1
    stored = [r for s in sessions for r in await store.list_runs(session_id=s, limit=1000)]
    assert len(stored) == len(sessions) + queued_count


@pytest.mark.slow
async def test_two_processes_taking_and_freeing_slots(store: SqlStore) -> None:
    sessions = [(await new_session(store)).session_id for _ in range(4)]

    results = await _run_workers(store, "cycle", 25, sessions)

    wins = sum(len(r["won"]) for r in results)
    assert wins + sum(len(r["rejected"]) for r in results) == 2 * 25 * 4
    assert wins >= len(sessions)
    stored = [r for s in sessions for r in await store.list_runs(session_id=s, limit=1000)]
    assert len(stored) == wins
    assert all(r.status is RunStatus.COMPLETED for r in stored)
