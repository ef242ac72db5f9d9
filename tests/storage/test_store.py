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

from culm.domain.events import (
    Cancelled,
    Complete,
    ContextCompacted,
    ContextPressure,
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
from culm.domain.time import new_id
from culm.errors import AlreadyRunningError, LeaseLostError, SessionBusyError
from culm.storage.base import Renewal, Reservation
from culm.storage.schema import messages as messages_table
from culm.storage.schema import runs as runs_table
from culm.storage.sql import SqlStore
from tests.storage.queue_support import get, raw_rows

T0 = datetime(2026, 11, 21, 8, 0, 0, 123456, tzinfo=UTC)
WORKER = Path(__file__).with_name("reserve_worker.py")


# Builders


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
    """A run reserved for ``owner`` (claimed at once, epoch 1); with ``queue``, unowned (a run
    reserved for an owner never queues)."""
    run = a_run(session_id, **fields)
    if queue:
        return await store.reserve_run(run, queue=True, jump_queue=jump_queue)
    return await store.reserve_run(run, queue=False, owner=owner, lease_seconds=300)


async def running_run(store: SqlStore, owner: str = "w1") -> Run:
    """A run that ``owner`` reserved and started (epoch 1), on a fresh session."""
    session = await new_session(store)
    run = (await reserve(store, session.session_id, owner=owner)).run
    started = await store.start_run(run.run_id, 1, owner=owner)
    assert started is not None
    return started


async def finish(store: SqlStore, run_id: str, status: RunStatus = RunStatus.COMPLETED) -> None:
    """End a run unfenced (as the store's own callers may)."""
    await store.finish_run(run_id, fence=None, status=status, error=None, usage=Usage())


async def leases(store: SqlStore) -> dict[str, datetime]:
    rows = await raw_rows(store, sa.select(runs_table.c.run_id, runs_table.c.lease_expires_at))
    return {row.run_id: row.lease_expires_at for row in rows}


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
        await store.start_run(run.run_id, 1, owner="w1")

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


async def test_reserve_run_takes_the_free_slot_ready_and_unowned(store: SqlStore) -> None:
    session = await new_session(store)
    run = a_run(session.session_id, trigger=RunTrigger.CLI, input="hello", created_at=T0)

    reservation = await store.reserve_run(run, queue=False)

    assert reservation == Reservation(run=run, active_run_id=None)
    assert await store.get_run(run.run_id) == run
    assert await store.get_active_run(session.session_id) == run
    [row] = await raw_rows(store, sa.select(runs_table).where(runs_table.c.run_id == run.run_id))
    assert (row.owner, row.lease_expires_at, row.epoch) == (None, None, 0)


async def test_reserving_for_an_owner_claims_it_at_once(store: SqlStore) -> None:
    session = await new_session(store)
    run = a_run(session.session_id)

    reservation = await store.reserve_run(run, queue=True, owner="w1", lease_seconds=300)

    assert reservation.run.epoch == 1
    assert (await get(store, run.run_id)).epoch == 1
    [row] = await raw_rows(store, sa.select(runs_table).where(runs_table.c.run_id == run.run_id))
    assert (row.owner, row.status, row.queued) == ("w1", "pending", False)
    assert await store.claim_runs("w2", limit=10, lease_seconds=300) == [], "never ready"
    # It never enters the queue: a busy slot refuses it whatever ``queue`` says.
    with pytest.raises(AlreadyRunningError):
        await store.reserve_run(a_run(session.session_id), queue=True, owner="w1", lease_seconds=9)


@pytest.mark.parametrize("started", [False, True], ids=["pending", "running"])
async def test_reserve_on_a_busy_session_is_refused(store: SqlStore, started: bool) -> None:
    session = await new_session(store)
    active = (await reserve(store, session.session_id)).run
    if started:
        await store.start_run(active.run_id, 1, owner="w1")
    refused = a_run(session.session_id)

    with pytest.raises(AlreadyRunningError) as err:
        await store.reserve_run(refused, queue=False)

    assert (err.value.session_id, err.value.run_id) == (session.session_id, active.run_id)
    assert await store.get_run(refused.run_id) is None
    assert await store.get_active_run(session.session_id) == await get(store, active.run_id)


async def test_a_queued_run_waits_behind_the_active_one(store: SqlStore) -> None:
    session = await new_session(store)
    active = (await reserve(store, session.session_id)).run

    reservation = await reserve(store, session.session_id, queue=True)

    assert reservation.active_run_id == active.run_id
    assert reservation.run.queued is True
    stored = await get(store, reservation.run.run_id)
    assert (stored.status, stored.queued) == (RunStatus.PENDING, True)
    assert (await get(store, active.run_id)).queued is False
    assert await store.get_active_run(session.session_id) == await get(store, active.run_id)
    # A queued run is not claimable: it has no slot yet.
    assert await store.claim_runs("w2", limit=10, lease_seconds=300) == []


async def test_finishing_a_run_makes_the_next_queued_ready_in_queue_order(store: SqlStore) -> None:
    session = await new_session(store)
    sid = session.session_id
    first = (await reserve(store, sid)).run
    b = (await reserve(store, sid, queue=True)).run
    c = (await reserve(store, sid, queue=True)).run
    d = (await reserve(store, sid, queue=True, jump_queue=True)).run
    e = (await reserve(store, sid, queue=True, jump_queue=True)).run
    other = (await reserve(store, (await new_session(store)).session_id, queue=True)).run

    order = []
    current, epoch, owner = first, 1, "w1"
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
        [promoted] = [run for run in claimed if run.session_id == sid]
        assert (promoted.status, promoted.queued) == (RunStatus.RUNNING, False)
        assert await store.get_active_run(sid) == promoted
        order.append(promoted.run_id)
        current, epoch, owner = promoted, promoted.epoch, "w2"

    assert order == [e.run_id, d.run_id, b.run_id, c.run_id]
    assert await store.get_active_run(sid) is None
    assert (await get(store, other.run_id)).queued is False, "another session: ready at once"


# Starts, leases, cancel, finish


async def test_start_run_only_by_its_owner_at_its_epoch(store: SqlStore) -> None:
    session = await new_session(store)
    run = (await reserve(store, session.session_id, owner="w1")).run

    with pytest.raises(LeaseLostError):
        await store.start_run(run.run_id, 1, owner="w2")
    with pytest.raises(LeaseLostError):
        await store.start_run(run.run_id, 2, owner="w1")
    started = await store.start_run(run.run_id, 1, owner="w1")

    assert started is not None
    assert started.status is RunStatus.RUNNING and is_utc(started.started_at)
    assert await get(store, run.run_id) == started
    # Only a pending run can be started; an unknown one is not there to start.
    assert await store.start_run(run.run_id, 1, owner="w1") is None
    assert await store.start_run(new_id(), 1, owner="w1") is None


async def test_a_claimed_run_with_a_cancel_request_ends_instead_of_starting(
    store: SqlStore,
) -> None:
    session = await new_session(store)
    run = (await reserve(store, session.session_id, owner="w1")).run

    flagged = await store.request_cancel(run.run_id, "user")
    assert flagged is not None and flagged.status is RunStatus.PENDING, "owned: only flagged"

    assert await store.start_run(run.run_id, 1, owner="w1") is None
    ended = await get(store, run.run_id)
    assert ended.status is RunStatus.CANCELLED
    [cancel] = await store.read_events(run.run_id)
    assert isinstance(cancel, Cancelled) and cancel.reason == "user"
    assert await store.get_active_run(session.session_id) is None


async def test_a_start_appends_the_runs_first_message_once(store: SqlStore) -> None:
    session = await new_session(store)
    run = (await reserve(store, session.session_id, owner="w1", input="hello")).run
    message = UserMessage(content="hello")

    with pytest.raises(LeaseLostError):  # not started: nothing appended
        await store.start_run(run.run_id, 1, owner="w2", message=message)
    assert await store.get_messages(session.session_id) == []
    assert await store.start_run(run.run_id, 1, owner="w1", message=message) is not None
    assert await store.get_messages(session.session_id) == [message]
    assert await store.has_run_messages(run.run_id)
    # A later attempt (after a release re-queued it), started by its claim, does not append it
    # again. (No event was written under the first claim: the release counts no attempt.)
    assert await store.release_runs("w1", {run.run_id: 1}, clean=True) == [run.run_id]
    [again] = await store.claim_runs("w2", limit=1, lease_seconds=300)
    assert (again.run_id, again.attempt, again.epoch) == (run.run_id, 1, 3)
    assert again.status is RunStatus.RUNNING
    assert await store.get_messages(session.session_id) == [message]


async def test_renew_leases_extends_ours_and_reports_cancel_requests_and_lost_runs(
    store: SqlStore,
) -> None:
    mine = [await running_run(store, "w1") for _ in range(3)]
    theirs = await running_run(store, "w2")
    await store.request_cancel(mine[0].run_id, "user")
    await store.request_cancel(theirs.run_id, "user")
    before = await leases(store)

    fences = {run.run_id: 1 for run in (*mine, theirs)}
    fences[mine[2].run_id] = 7  # a stale epoch: no longer ours
    renewal = await store.renew_leases("w1", fences, 3600)

    assert renewal == Renewal(
        cancel_requested={mine[0].run_id: "user"}, lost=sorted([mine[2].run_id, theirs.run_id])
    )
    after = await leases(store)
    for run in mine[:2]:
        assert after[run.run_id] > before[run.run_id]
    for run in (mine[2], theirs):
        assert after[run.run_id] == before[run.run_id]
    assert await store.renew_leases("w1", {}, 3600) == Renewal(cancel_requested={}, lost=[])


async def test_cancelling_a_queued_run_ends_it_at_once(store: SqlStore) -> None:
    session = await new_session(store)
    active = (await reserve(store, session.session_id)).run
    queued = (await reserve(store, session.session_id, queue=True)).run
    # Events left from an earlier attempt: the cancel goes after them.
    await store.append_events(tokens(queued, 2))

    result = await store.request_cancel(queued.run_id, "user asked")

    assert result is not None
    assert result == await get(store, queued.run_id)
    assert (result.status, result.queued, result.last_seq) == (RunStatus.CANCELLED, False, 3)
    assert is_utc(result.completed_at)
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
    assert await store.get_active_run(session.session_id) is None


async def test_cancelling_a_ready_run_ends_it_and_readies_the_next(store: SqlStore) -> None:
    session = await new_session(store)
    ready = (await store.reserve_run(a_run(session.session_id), queue=False)).run
    queued = (await reserve(store, session.session_id, queue=True)).run

    result = await store.request_cancel(ready.run_id, "user")

    assert result is not None and result.status is RunStatus.CANCELLED
    [claimed] = await store.claim_runs("w1", limit=5, lease_seconds=300)
    assert claimed.run_id == queued.run_id


async def test_cancel_racing_a_start_never_ends_a_run_its_owner_runs(store: SqlStore) -> None:
    session = await new_session(store)
    for _ in range(20):
        run = (await reserve(store, session.session_id)).run
        started, _ = await asyncio.gather(
            store.start_run(run.run_id, 1, owner="w1"),
            store.request_cancel(run.run_id, "user"),
        )
        final = await get(store, run.run_id)
        if started is not None:
            # The owner runs it: the cancel must only be flagged for the owner to act on.
            assert final.status is RunStatus.RUNNING
            renewal = await store.renew_leases("w1", {run.run_id: 1}, 300)
            assert renewal.cancel_requested == {run.run_id: "user"}
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
    renewal = await store.renew_leases("w1", {run.run_id: 1}, 300)
    assert renewal.cancel_requested == {run.run_id: "user"}


async def test_cancelling_a_terminal_run_changes_nothing(store: SqlStore) -> None:
    run = await running_run(store)
    await store.append_events(tokens(run, 1))
    await finish(store, run.run_id)
    before = await get(store, run.run_id)

    assert await store.request_cancel(run.run_id, "late") == before
    assert await get(store, run.run_id) == before
    [row] = await raw_rows(
        store, sa.select(runs_table.c.cancel_requested).where(runs_table.c.run_id == run.run_id)
    )
    assert row.cancel_requested is None  # no request left on an ended run
    assert await store.last_event_seq(run.run_id) == 1
    assert await store.request_cancel(new_id(), "unknown") is None


async def test_finish_run_records_the_outcome_and_frees_the_slot(store: SqlStore) -> None:
    run = await running_run(store)
    usage = Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15, cache_read_tokens=3)

    await store.finish_run(
        run.run_id, fence=("w1", 1), status=RunStatus.ERROR, error="boom", usage=usage
    )

    finished = await get(store, run.run_id)
    assert (finished.status, finished.error, finished.usage) == (RunStatus.ERROR, "boom", usage)
    assert is_utc(finished.completed_at)
    assert finished.started_at is not None and finished.completed_at is not None
    assert finished.completed_at >= finished.started_at, "both database time"
    assert await store.get_active_run(run.session_id) is None
    assert (await reserve(store, run.session_id)).active_run_id is None
    # Fenced: once it ended (owner gone), a second finish is a lost lease.
    with pytest.raises(LeaseLostError):
        await store.finish_run(
            run.run_id, fence=("w1", 1), status=RunStatus.COMPLETED, error=None, usage=usage
        )
    assert (await get(store, run.run_id)).status is RunStatus.ERROR


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


async def test_cancelling_a_released_run_ends_it_at_once(store: SqlStore) -> None:
    run = await running_run(store, "w1")
    await store.append_events(tokens(run, 4))
    await store.release_runs("w1", {run.run_id: 1}, clean=True)

    result = await store.request_cancel(run.run_id, "user")

    assert result is not None and result.status is RunStatus.CANCELLED
    assert [(e.seq, e.type) for e in await store.read_events(run.run_id, after=3)] == [
        (4, "token"),
        (5, "run_recovered"),
        (6, "cancelled"),
    ]
    assert await store.get_active_run(run.session_id) is None


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
        ContextPressure(percent=91.5, level="critical"),
        ContextCompacted(
            trigger="auto",
            strategy="elide+summarize",
            messages_compacted=7,
            tokens_before=3000,
            tokens_after=900,
            summary_usage=usage,
        ),
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
    # A cursor past any seq the column holds (int32 on PostgreSQL), up to the API's 2**63 - 1.
    assert await store.read_events(run.run_id, after=2**31 - 1) == []
    assert await store.read_events(run.run_id, after=2**63 - 1) == []
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
    await store.append_events(stamp(child, [SubAgentStarted(**ids, title="another run's")]))
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
    await store.reserve_run(run, queue=False, owner="w1", lease_seconds=60)
    await store.start_run(run.run_id, 1, owner="w1")
    await store.append_events(
        [Token(content="x").stamped(seq=1, run_id=run.run_id, session_id=run.session_id, ts=local)]
    )
    lease = (await leases(store))[run.run_id]
    await store.finish_run(
        run.run_id, fence=("w1", 1), status=RunStatus.COMPLETED, error=None, usage=Usage()
    )
    stored = await get(store, run.run_id)
    [event] = await store.read_events(run.run_id)
    got_session = await store.get_session(session.session_id)
    assert got_session is not None

    values = {
        "session.created_at": got_session.created_at,
        "run.created_at": stored.created_at,
        "run.last_event_at": stored.last_event_at,
        "event.ts": event.ts,
    }
    for name, value in values.items():
        assert is_utc(value), f"{name} = {value!r}"
        assert value == local, name
    # Database time: stamped by the database, read back UTC all the same.
    for value in (stored.started_at, stored.completed_at, lease):
        assert is_utc(value), value


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
