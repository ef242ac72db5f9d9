"""The store's side of people in the loop, on every backend: parking is fenced, a waiting run
holds its session's slot but no lease (no sweeper takes it, even from a dead owner), an answer
makes it ready for any worker, a cancel ends it at once."""

from __future__ import annotations

import pytest

from culm.domain.events import InputRequested
from culm.domain.input import InputAnswer
from culm.domain.models import AssistantMessage, RunStatus, ToolCall, Usage
from culm.domain.time import new_id
from culm.errors import AlreadyRunningError, InputConflictError, LeaseLostError
from culm.storage.base import SweepPolicy
from culm.storage.sql import SqlStore
from tests.storage.queue_support import a_run, owned_run, stamp

POLICY = SweepPolicy(requeue=False, max_attempts=3, lease_seconds=10)
CALL = ToolCall(id="c1", name="bash", arguments='{"command": "ls"}')


async def _park(store: SqlStore, owner: str, epoch: int) -> tuple[str, str, RunStatus]:
    run = await owned_run(store, owner)
    request = {
        "request_id": new_id(),
        "kind": "approval",
        "tool_call_id": CALL.id,
        "tool_name": CALL.name,
        "arguments": {"command": "ls"},
        "question": None,
        "choices": None,
    }
    event = InputRequested(
        request_id=request["request_id"], kind="approval", tool_call_id="c1", tool_name="bash"
    )
    status = await store.park_run(
        run.run_id,
        fence=(owner, epoch),
        messages=[AssistantMessage(tool_calls=(CALL,))],
        requests=[request],
        events=stamp(run, [event]),
        usage=Usage(total_tokens=3),
        timeout=None,
    )
    return run.run_id, str(request["request_id"]), status


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
    [claimed] = await store.claim_runs("w2", limit=5, lease_seconds=10)
    assert (claimed.run_id, claimed.status, claimed.owner) == (run_id, RunStatus.RUNNING, "w2")
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
