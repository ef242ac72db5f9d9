"""The store's side of people in the loop, on every backend: parking is fenced, a waiting run
holds its session's slot but no lease (no sweeper takes it, even from a dead owner), an answer
makes it ready for any worker, a cancel ends it at once."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from culm.domain.events import InputRequested
from culm.domain.input import InputAnswer
from culm.domain.models import AssistantMessage, Run, RunStatus, Session, ToolCall, Usage
from culm.domain.time import new_id
from culm.errors import AlreadyRunningError, InputConflictError, LeaseLostError
from culm.storage import dbtime, inputs
from culm.storage.base import SweepPolicy
from culm.storage.sql import SqlStore
from culm.storage.wakeups import Wake
from tests.storage.queue_support import a_run, owned_run, stamp

POLICY = SweepPolicy(requeue=False, max_attempts=3, lease_seconds=10)
CALL = ToolCall(id="c1", name="bash", arguments='{"command": "ls"}')


async def _park(
    store: SqlStore, owner: str, epoch: int, *, calls: int = 1, timeout: float | None = None
) -> tuple[str, str, RunStatus]:
    run = await owned_run(store, owner)
    return (run.run_id, *await _park_run(store, run, owner, epoch, calls=calls, timeout=timeout))


async def _park_run(
    store: SqlStore,
    run: Run,
    owner: str,
    epoch: int,
    *,
    calls: int = 1,
    timeout: float | None = None,
) -> tuple[str, RunStatus]:
    """Park ``run`` with ``calls`` approval requests; the first request's id, and the status."""
    made = [CALL.model_copy(update={"id": f"c{i}"}) for i in range(1, calls + 1)]
    requests: list[dict[str, Any]] = [
        {
            "request_id": new_id(),
            "kind": "approval",
            "tool_call_id": call.id,
            "tool_name": call.name,
            "arguments": {"command": "ls"},
            "question": None,
            "choices": None,
        }
        for call in made
    ]
    events = [
        InputRequested(
            request_id=request["request_id"],
            kind="approval",
            tool_call_id=request["tool_call_id"],
            tool_name="bash",
        )
        for request in requests
    ]
    status = await store.park_run(
        run.run_id,
        fence=(owner, epoch),
        messages=[AssistantMessage(tool_calls=tuple(made))],
        requests=requests,
        events=stamp(run, events),
        usage=Usage(total_tokens=3),
        timeout=timeout,
    )
    return str(requests[0]["request_id"]), status


async def test_parking_is_fenced_and_a_waiting_run_has_no_owner_and_no_lease(
    store: SqlStore,
) -> None:
    with pytest.raises(LeaseLostError):
        await _park(store, "w1", epoch=7)
    run_id, _, status = await _park(store, "w1", epoch=1)
    assert status is RunStatus.WAITING
    run = await store.get_run(run_id)
    assert run is not None
    assert (run.status, run.owner, run.epoch, run.usage.total_tokens) == (
        RunStatus.WAITING,
        None,
        2,
        3,
    )
    # It holds its session's slot.
    with pytest.raises(AlreadyRunningError):
        await store.reserve_run(a_run(run.session_id), queue=False)
    # No sweeper takes it: not by its lease (it has none), not as a dead owner's.
    taken = await store.sweep("w2", POLICY, dead_owners=["w1"])  # the refused park's run only
    assert run_id not in {other.run_id for other in taken}
    renewal = await store.renew_leases("w1", {run_id: 1}, 10)
    assert renewal.lost == []  # parked by its owner: done, not lost
    assert (await store.get_run(run_id)).status is RunStatus.WAITING  # type: ignore[union-attr]


async def test_an_answer_makes_the_run_ready_for_any_worker(store: SqlStore) -> None:
    run_id, request_id, _ = await _park(store, "w1", epoch=1)
    request, [event] = await store.answer_input(run_id, request_id, InputAnswer(approve=True))
    assert (request.status, event.type, event.seq) == ("answered", "input_received", 2)
    with pytest.raises(InputConflictError):
        await store.answer_input(run_id, request_id, InputAnswer(approve=False))
    parked = await store.get_run(run_id)
    [claimed] = await store.claim_runs("w2", limit=5, lease_seconds=10)
    assert (claimed.run_id, claimed.status, claimed.owner) == (run_id, RunStatus.RUNNING, "w2")
    assert parked is not None and claimed.started_at == parked.started_at  # resumed: same start
    assert claimed.last_seq == 2 and claimed.round_count == 0
    [answered] = await store.list_input([run_id], statuses=("answered",))
    assert answered.answer == InputAnswer(approve=True)


async def test_a_cancel_ends_a_waiting_run_at_once(store: SqlStore) -> None:
    run_id, request_id, _ = await _park(store, "w1", epoch=1)
    run = await store.request_cancel(run_id, "no longer needed")
    assert run is not None and run.status is RunStatus.CANCELLED
    assert [e.type for e in await store.read_events(run_id)] == ["input_requested", "cancelled"]
    with pytest.raises(InputConflictError):
        await store.answer_input(run_id, request_id, InputAnswer(approve=True))
    [closed] = await store.list_input([run_id], statuses=None)
    assert (closed.status, closed.answer) == ("closed", None)  # ended with its run


async def test_a_cancel_requested_while_the_round_ran_wins_over_parking(store: SqlStore) -> None:
    run = await owned_run(store, "w1")
    flagged = await store.request_cancel(run.run_id, "stop")
    assert flagged is not None and flagged.status is RunStatus.RUNNING  # owned: a flag only
    _, status = await _park_run(store, run, "w1", epoch=1)
    assert status is RunStatus.CANCELLED
    ended = await store.get_run(run.run_id)
    assert ended is not None and ended.status is RunStatus.CANCELLED
    assert await store.list_input([run.run_id], statuses=None) == []  # nothing asked
    assert [e.type for e in await store.read_events(run.run_id)] == ["cancelled"]
    assert [m.role for m in await store.get_messages(run.session_id)] == ["assistant"]


async def test_a_timeout_never_overwrites_an_answer_given_after_it_read_the_requests(
    store: SqlStore,
) -> None:
    run_id, first, _ = await _park(store, "w1", epoch=1, calls=2, timeout=0.0)
    name = store.dialect.name

    def read_due(conn: sa.Connection) -> tuple[Any, list[Any]]:
        now = dbtime.read_now(conn, name)
        return now, inputs.due(conn, now)

    now, due = await store.write(read_due)
    assert len(due) == 2
    await store.answer_input(run_id, first, InputAnswer(approve=True))  # a person, meanwhile
    events = await store.write(
        lambda conn: inputs.expire_due(conn, store._rows, due, now, Wake(notify=False))
    )
    assert [(e.type, e.seq) for e in events] == [("input_received", 4)]  # the second only
    answered, expired = await store.list_input([run_id], statuses=None)
    assert (answered.status, answered.answer) == ("answered", InputAnswer(approve=True))
    assert expired.status == "expired" and expired.answer is not None
    assert expired.answer.timed_out
    ready = await store.get_run(run_id)
    assert ready is not None and ready.status is RunStatus.PENDING


async def test_a_timeout_that_ends_the_run_closes_its_other_requests(store: SqlStore) -> None:
    session = Session(
        session_id=new_id(), model="scripted:demo", workspace="/w", input_timeout_action="error"
    )
    await store.create_session(session)
    run = a_run(session.session_id)
    await store.reserve_run(run, queue=False, owner="w1", lease_seconds=300)
    started = await store.start_run(run.run_id, 1, owner="w1")
    assert started is not None
    await _park_run(store, started, "w1", epoch=1, calls=2, timeout=0.0)
    events = await store.expire_input()
    assert [e.type for e in events] == ["input_received", "error"]
    ended = await store.get_run(run.run_id)
    assert ended is not None and ended.status is RunStatus.ERROR
    statuses = [r.status for r in await store.list_input([run.run_id], statuses=None)]
    assert statuses == ["expired", "closed"]


async def test_a_taken_over_parent_ends_its_waiting_child_and_closes_its_requests(
    store: SqlStore,
) -> None:
    parent = await owned_run(store, "w1")
    child = await owned_run(store, "w1", parent_run_id=parent.run_id)
    _, status = await _park_run(store, child, "w1", epoch=1)
    assert status is RunStatus.WAITING
    assert await store.waiting_below(parent.run_id, 8) == [child.run_id]
    taken = await store.sweep("w2", POLICY, dead_owners=["w1"])
    assert {run.run_id for run in taken} == {parent.run_id, child.run_id}
    ended = await store.get_run(child.run_id)
    assert ended is not None and ended.status is RunStatus.CANCELLED
    [closed] = await store.list_input([child.run_id], statuses=None)
    assert closed.status == "closed"
    assert await store.waiting_below(parent.run_id, 8) == []
