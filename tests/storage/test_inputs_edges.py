"""People-in-the-loop store cases the main tests leave out (found by mutation testing, issue
#22): what a run ended by an input timeout records, the session's next run taking its slot,
and what resolving a resumed run's requests stores."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from culm.domain.events import InputReceived, InputRequested
from culm.domain.input import InputAnswer
from culm.domain.models import Run, RunStatus, Session, ToolResultMessage, Usage
from culm.domain.time import new_id
from culm.errors import InputConflictError, NotFoundError
from culm.storage import dbtime, inputs
from culm.storage.schema import messages, run_events, runs
from culm.storage.sql import SqlStore
from culm.storage.wakeups import Wake
from tests.storage.queue_support import a_run, get, owned_run, raw_rows, stamp
from tests.storage.test_inputs import _park_run


async def _started(store: SqlStore, session: Session) -> Run:
    await store.create_session(session)
    run = a_run(session.session_id)
    await store.reserve_run(run, queue=False, owner="w1", lease_seconds=300)
    started = await store.start_run(run.run_id, 1, owner="w1")
    assert started is not None
    return started


async def test_a_run_ended_by_an_input_timeout_says_why_and_frees_its_slot(
    store: SqlStore,
) -> None:
    session = Session(
        session_id=new_id(), model="scripted:demo", workspace="/w", input_timeout_action="error"
    )
    run = await _started(store, session)
    request_id, _ = await _park_run(store, run, "w1", epoch=1, timeout=0.0)
    behind = (await store.reserve_run(a_run(session.session_id), queue=True)).run
    assert behind.queued

    events = await store.expire_input()

    message = f"no answer to approval request {request_id!r} (bash) within the input timeout of 0 s"
    assert [(event.type, getattr(event, "message", None)) for event in events] == [
        ("input_received", None),
        ("error", message),
    ]
    ended = await get(store, run.run_id)
    assert (ended.status, ended.error, ended.queued) == (RunStatus.ERROR, message, False)
    assert ended.completed_at is not None
    ready = await get(store, behind.run_id)
    assert (ready.status, ready.queued) == (RunStatus.PENDING, False), "it takes the slot"


async def test_the_session_input_timeout_is_named_in_the_error(store: SqlStore) -> None:
    session = Session(
        session_id=new_id(),
        model="scripted:demo",
        workspace="/w",
        input_timeout=2.5,
        input_timeout_action="error",
    )
    run = await _started(store, session)
    await _park_run(store, run, "w1", epoch=1, timeout=0.0)

    await store.expire_input()

    ended = await get(store, run.run_id)
    assert ended.error is not None and ended.error.endswith("within the input timeout of 2.5 s")


async def test_resolving_stores_the_results_as_the_runs_and_applies_expired_requests(
    store: SqlStore,
) -> None:
    run = await owned_run(store, "w1")
    expired, _ = await _park_run(store, run, "w1", epoch=1, calls=2, timeout=0.0)
    await store.expire_input()  # denied, timed out: the run is ready again
    [resumed] = await store.claim_runs("w2", limit=1, lease_seconds=300)
    assert resumed.run_id == run.run_id
    requests = await store.list_input([run.run_id], statuses=None)
    assert [request.status for request in requests] == ["expired", "expired"]
    assert requests[0].request_id == expired
    assert requests[0].answer == InputAnswer(approve=False, timed_out=True)

    result = ToolResultMessage(tool_call_id="c1", tool_name="bash", content="denied")
    await store.resolve_input(
        run.run_id,
        fence=("w2", resumed.epoch),
        messages=[result],
        request_ids=[request.request_id for request in requests],
    )

    statuses = [r.status for r in await store.list_input([run.run_id], statuses=None)]
    assert statuses == ["applied", "applied"]
    rows = await raw_rows(
        store, sa.select(messages.c.role, messages.c.run_id).order_by(messages.c.idx)
    )
    assert [(row.role, row.run_id) for row in rows] == [
        ("assistant", run.run_id),
        ("tool", run.run_id),
    ]


async def test_answers_to_what_does_not_exist_or_cannot_take_one_say_why(store: SqlStore) -> None:
    run = await owned_run(store, "w1")
    request_id, _ = await _park_run(store, run, "w1", epoch=1)
    other = await owned_run(store, "w1")
    other_request, _ = await _park_run(store, other, "w1", epoch=1)
    approve = InputAnswer(approve=True)

    with pytest.raises(NotFoundError) as missing_run:
        await store.answer_input("no-such-run", request_id, approve)
    assert str(missing_run.value) == "run 'no-such-run' not found"
    with pytest.raises(NotFoundError) as missing:
        await store.answer_input(run.run_id, other_request, approve)  # another run's request
    assert str(missing.value) == f"input request {other_request!r} not found"

    await store.answer_input(run.run_id, request_id, approve)
    with pytest.raises(InputConflictError) as twice:
        await store.answer_input(run.run_id, request_id, InputAnswer(approve=False))
    assert str(twice.value) == f"input request {request_id!r}: the request was answered already"
    assert twice.value.request.answer == approve

    # A guard no transaction should reach (every write that moves a waiting run closes its
    # requests or answers them): an open request of a run that does not wait.
    await store.write(
        lambda conn: conn.execute(
            runs.update().where(runs.c.run_id == other.run_id).values(status="pending")
        )
    )
    with pytest.raises(InputConflictError) as not_waiting:
        await store.answer_input(other.run_id, other_request, approve)
    assert str(not_waiting.value) == (
        f"input request {other_request!r}: the run is not waiting (it is pending)"
    )
    assert not_waiting.value.request.request_id == other_request


async def test_an_answer_is_stamped_and_resumes_only_its_own_run(store: SqlStore) -> None:
    run = await owned_run(store, "w1")
    request_id, _ = await _park_run(store, run, "w1", epoch=1)
    other = await owned_run(store, "w1")
    await _park_run(store, other, "w1", epoch=1)

    wakeups = store.wakeups()
    try:
        answer = InputAnswer(approve=True)
        request, [event] = await store.answer_input(run.run_id, request_id, answer)
        assert await wakeups.wait(10) is True, "ready again: workers are woken"
    finally:
        await wakeups.aclose()

    assert request.answered_at is not None and request.answered_at == event.ts
    [stored] = await store.list_input([run.run_id], statuses=None)
    assert stored.answered_at == request.answered_at
    assert (await get(store, run.run_id)).status is RunStatus.PENDING, "another run's open request"
    assert (await get(store, other.run_id)).status is RunStatus.WAITING


async def _park_question(store: SqlStore, run: Run) -> str:
    request_id = new_id()
    request = {
        "request_id": request_id,
        "kind": "question",
        "tool_call_id": "q1",
        "tool_name": "ask_user",
        "arguments": {"question": "which?"},
        "question": "which?",
        "choices": None,
    }
    event = InputRequested(
        request_id=request_id, kind="question", tool_call_id="q1", tool_name="ask_user"
    )
    status = await store.park_run(
        run.run_id,
        fence=("w1", 1),
        messages=[],
        requests=[request],
        events=stamp(run, [event]),
        usage=Usage(),
        timeout=None,
    )
    assert status is RunStatus.WAITING
    return request_id


async def test_the_received_event_carries_the_whole_answer(store: SqlStore) -> None:
    approval = await owned_run(store, "w1")
    approval_id, _ = await _park_run(store, approval, "w1", epoch=1)
    question = await owned_run(store, "w1")
    question_id = await _park_question(store, question)

    edited = InputAnswer(approve=True, reason="narrower", arguments={"command": "ls -l"})
    _, [approved] = await store.answer_input(approval.run_id, approval_id, edited)
    said = InputAnswer(answer="the second", reason="it is newer")
    _, [answered] = await store.answer_input(question.run_id, question_id, said)

    assert isinstance(approved, InputReceived) and isinstance(answered, InputReceived)
    assert (approved.approve, approved.reason, approved.arguments, approved.answer) == (
        True,
        "narrower",
        {"command": "ls -l"},
        None,
    )
    assert (answered.approve, answered.reason, answered.arguments, answered.answer) == (
        None,
        "it is newer",
        None,
        "the second",
    )
    assert await store.read_events(question.run_id, after=1) == [answered]


async def test_waiting_below_looks_exactly_depth_levels_down(store: SqlStore) -> None:
    parent = await owned_run(store, "w1")
    child = await owned_run(store, "w1", parent_run_id=parent.run_id)
    grandchild = await owned_run(store, "w1", parent_run_id=child.run_id)
    await _park_run(store, grandchild, "w1", epoch=1)

    assert await store.waiting_below(parent.run_id, 1) == []
    assert await store.waiting_below(parent.run_id, 2) == [grandchild.run_id]
    assert await store.waiting_below(grandchild.run_id, 0) == [grandchild.run_id]


async def test_expired_requests_are_answered_run_by_run_in_their_order(store: SqlStore) -> None:
    made = [await owned_run(store, "w1") for _ in range(2)]
    for run in made:
        await _park_run(store, run, "w1", epoch=1, calls=2, timeout=0.0)

    events = await store.expire_input()

    expected = [
        (run.run_id, request.request_id)
        for run in sorted(made, key=lambda run: run.run_id)
        for request in await store.list_input([run.run_id], statuses=None)
    ]
    assert [(e.run_id, getattr(e, "request_id", None)) for e in events] == expected


async def test_an_expiry_answers_at_most_its_limit_of_requests(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = await owned_run(store, "w1")
    await _park_run(store, run, "w1", epoch=1, calls=2, timeout=0.0)
    monkeypatch.setattr(inputs, "EXPIRE_LIMIT", 1)

    assert len(await store.expire_input()) == 1
    assert (await get(store, run.run_id)).status is RunStatus.WAITING, "one still open"
    assert len(await store.expire_input()) == 1
    assert (await get(store, run.run_id)).status is RunStatus.PENDING


async def test_answered_requests_do_not_use_up_an_expirys_limit(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = await owned_run(store, "w1")
    first, _ = await _park_run(store, run, "w1", epoch=1, calls=2, timeout=0.0)
    await store.answer_input(run.run_id, first, InputAnswer(approve=True))
    monkeypatch.setattr(inputs, "EXPIRE_LIMIT", 1)

    [event] = await store.expire_input()

    assert isinstance(event, InputReceived) and event.request_id != first and event.timed_out
    assert (await get(store, run.run_id)).status is RunStatus.PENDING


async def test_an_expiry_goes_on_past_requests_answered_since_it_read_them(
    store: SqlStore,
) -> None:
    made = sorted([await owned_run(store, "w1") for _ in range(3)], key=lambda run: run.run_id)
    first, _ = await _park_run(store, made[0], "w1", epoch=1, calls=2, timeout=0.0)
    only, _ = await _park_run(store, made[1], "w1", epoch=1, timeout=0.0)
    await _park_run(store, made[2], "w1", epoch=1, timeout=0.0)
    name = store.dialect.name

    def read_due(conn: sa.Connection) -> tuple[Any, list[Any]]:
        now = dbtime.read_now(conn, name)
        return now, inputs.due(conn, now)

    now, due = await store.write(read_due)
    assert len(due) == 4
    # Meanwhile: one of the first run's requests is answered (it still waits for the other),
    # and the second run's only one (it is ready again, no longer waiting).
    await store.answer_input(made[0].run_id, first, InputAnswer(approve=True))
    await store.answer_input(made[1].run_id, only, InputAnswer(approve=True))

    events = await store.write(
        lambda conn: inputs.expire_due(conn, store._rows, due, now, Wake(notify=False))
    )

    assert [event.run_id for event in events] == [made[0].run_id, made[2].run_id]


async def test_an_expiry_goes_on_past_a_run_it_ended(store: SqlStore) -> None:
    session = Session(
        session_id=new_id(), model="scripted:demo", workspace="/w", input_timeout_action="error"
    )
    other = Session(
        session_id=new_id(), model="scripted:demo", workspace="/w", input_timeout_action="error"
    )
    made = sorted([await _started(store, session), await _started(store, other)], key=_run_id)
    await _park_run(store, made[0], "w1", epoch=1, calls=2, timeout=0.0)
    await _park_run(store, made[1], "w1", epoch=1, timeout=0.0)

    events = await store.expire_input()

    assert [(event.run_id, event.type) for event in events] == [
        (made[0].run_id, "input_received"),
        (made[0].run_id, "error"),
        (made[1].run_id, "input_received"),
        (made[1].run_id, "error"),
    ]


def _run_id(run: Run) -> str:
    return run.run_id


async def test_a_cancel_that_wins_over_parking_frees_the_slot_for_the_next_run(
    store: SqlStore,
) -> None:
    run = await owned_run(store, "w1")
    behind = (await store.reserve_run(a_run(run.session_id), queue=True)).run
    await store.request_cancel(run.run_id, "stop")

    _, status = await _park_run(store, run, "w1", epoch=1)

    assert status is RunStatus.CANCELLED
    ready = await get(store, behind.run_id)
    assert (ready.status, ready.queued) == (RunStatus.PENDING, False)


async def test_a_request_reads_back_with_its_deadline_and_attempt(store: SqlStore) -> None:
    run = await owned_run(store, "w1", attempt=2)
    await _park_run(store, run, "w1", epoch=1, timeout=3600.0)

    [request] = await store.list_input([run.run_id])

    assert request.attempt == 2
    assert request.expires_at is not None
    assert request.expires_at - request.created_at == timedelta(seconds=3600)


async def test_a_parked_run_keeps_no_lease_and_its_requests_events_carry_its_fence(
    store: SqlStore,
) -> None:
    """The ``input_requested`` events are written under the parking claim's epoch (fenced, as a
    runner's events are), and the waiting run has no lease for a sweeper to expire."""
    run = await owned_run(store, "w1")
    await _park_run(store, run, "w1", epoch=1, timeout=3600.0)

    stored = await raw_rows(
        store,
        sa.select(run_events.c.type, run_events.c.epoch).where(run_events.c.run_id == run.run_id),
    )
    [row] = await raw_rows(
        store, sa.select(runs.c.lease_expires_at).where(runs.c.run_id == run.run_id)
    )

    assert [(event.type, event.epoch) for event in stored] == [("input_requested", 1)]
    assert row.lease_expires_at is None


async def test_an_expired_request_records_when_it_was_answered(store: SqlStore) -> None:
    run = await owned_run(store, "w1")
    await _park_run(store, run, "w1", epoch=1, timeout=0.0)

    await store.expire_input()

    [request] = await store.list_input([run.run_id], statuses=None)
    assert request.status == "expired"
    assert request.answered_at is not None and request.answered_at >= request.created_at
