"""The runner and its subscriptions in isolation: fan-out, ring, caches, lag."""

from __future__ import annotations

import asyncio
import math

import pytest

from culm.domain.events import RunEvent, SubAgentStarted, Token, TokenBudget, TokenBudgetUpdated
from culm.domain.liveness import SEQ_RESERVE
from culm.domain.models import Run, RunStatus, Usage
from culm.runtime.runner import RING_CAPACITY, Runner
from culm.runtime.subscription import Lagged

# In memory only: nothing here touches a database (the PostgreSQL variants added only set-up).
pytestmark = pytest.mark.backends("sqlite")

CRITICAL = 32  # docs/ARCHITECTURE.md: "the last ≤ 32 critical events" (the contract's number)


def _runner(queue_size: int = 10) -> tuple[Runner, list[RunEvent]]:
    """A runner whose store publishes each event back at once (as the batcher does once it
    has stored it)."""
    stored: list[RunEvent] = []
    run = Run(run_id="r", session_id="s", model="scripted:echo")

    def persist(event: RunEvent, urgent: bool) -> None:
        stored.append(event)
        runner.stored(event)

    runner = Runner(run, persist=persist, fan_out_session=lambda e: None, queue_size=queue_size)
    return runner, stored


async def test_events_beyond_the_reservation_wait_for_the_store_then_the_rest_go_at_once() -> None:
    """Pre-commit delivery: before the attempt's first write nothing is reserved, so events
    are held (and their write asked for at once); a write reserves SEQ_RESERVE seqs past its
    last event, and the events within that are delivered as they are emitted, in order."""
    pending: list[tuple[RunEvent, bool]] = []
    delivered: list[RunEvent] = []  # what the session's subscribers got
    run = Run(run_id="r", session_id="s", model="scripted:echo")
    runner = Runner(
        run,
        persist=lambda e, u: pending.append((e, u)),
        fan_out_session=delivered.append,
        queue_size=10,
    )
    subscription = runner.attach(0)
    assert subscription is not None
    first = runner.emit(Token(content="a"))
    second = runner.emit(Token(content="b"))
    assert pending == [(first, True), (second, True)]  # held: urgent writes
    assert delivered == []
    runner.stored(first)  # reserves up to 1 + SEQ_RESERVE: both are delivered, in order
    assert await subscription.next_batch() == [first, second]
    third = runner.emit(Token(content="c"))
    assert pending[-1] == (third, False)  # within the reservation: delivered before stored
    assert await subscription.next_batch() == [third]
    assert delivered == [first, second, third]
    assert runner.liveness.last_seq == 1  # the liveness fields name stored events only


async def test_a_run_that_outruns_its_reservation_waits_for_the_next_write() -> None:
    pending: list[RunEvent] = []
    run = Run(run_id="r", session_id="s", model="scripted:echo")
    runner = Runner(
        run,
        persist=lambda e, u: pending.append(e),
        fan_out_session=lambda e: None,
        queue_size=2 * SEQ_RESERVE,
    )
    subscription = runner.attach(0)
    assert subscription is not None
    runner.emit(Token(content="x"))
    runner.stored(pending[0])
    for _ in range(SEQ_RESERVE + 5):
        runner.emit(Token(content="x"))
    delivered = await subscription.next_batch()
    assert [e.seq for e in delivered] == list(range(1, SEQ_RESERVE + 2))  # up to 1 + reserve
    runner.stored(pending[3])  # now up to 4 + reserve
    assert [e.seq for e in await subscription.next_batch()] == list(
        range(SEQ_RESERVE + 2, SEQ_RESERVE + 5)
    )


async def test_emit_stamps_consecutive_seqs_and_persists_everything() -> None:
    runner, stored = _runner()
    events = [runner.emit(Token(content=str(i))) for i in range(5)]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert stored == events
    assert runner.liveness.last_seq == 5


async def test_attach_replays_the_ring_after_the_cursor_then_live() -> None:
    runner, _ = _runner()
    for i in range(3):
        runner.emit(Token(content=str(i)))
    subscription = runner.attach(1)
    assert subscription is not None
    runner.emit(Token(content="live"))
    assert [e.seq for e in await subscription.next_batch()] == [2, 3, 4]


async def test_attach_refuses_a_cursor_older_than_the_ring() -> None:
    runner, _ = _runner()
    for _ in range(RING_CAPACITY + 10):
        runner.emit(Token(content="x"))
    assert runner.attach(5) is None
    assert runner.attach(10) is not None  # ring starts at seq 11


async def test_a_full_queue_marks_the_subscriber_lagged_without_blocking_others() -> None:
    runner, _ = _runner(queue_size=3)
    slow = runner.attach(0)
    fast = runner.attach(0)
    assert slow is not None and fast is not None
    for i in range(3):
        runner.emit(Token(content=str(i)))
    assert [e.seq for e in await fast.next_batch()] == [1, 2, 3]
    runner.emit(Token(content="overflow"))
    with pytest.raises(Lagged):
        await slow.next_batch()
    assert [e.seq for e in await fast.next_batch()] == [4]


async def test_replay_cache_keeps_the_last_critical_events_and_budget() -> None:
    runner, _ = _runner()
    for i in range(CRITICAL + 3):
        runner.emit(SubAgentStarted(child_session_id=str(i), child_run_id=str(i)))
        runner.emit(TokenBudgetUpdated(usage=TokenBudget(prompt_tokens=i)))
    cache = runner.replay_cache()
    assert len(cache) == CRITICAL + 1
    assert cache[0].child_session_id == "3"  # type: ignore[union-attr]
    assert cache[-1].type == "token_budget_updated"
    assert cache[-1].usage.prompt_tokens == CRITICAL + 2  # type: ignore[union-attr]
    assert [e.seq for e in cache] == sorted(e.seq for e in cache)


async def test_liveness_follows_tools_and_rounds() -> None:
    from culm.domain.events import RunnerProgress, ToolError, ToolStart

    runner, _ = _runner()
    runner.emit(RunnerProgress(round_count=2))
    runner.emit(ToolStart(tool_call_id="c", tool_name="bash", arguments={}))
    assert (runner.liveness.last_tool_name, runner.liveness.last_tool_phase) == ("bash", "begin")
    runner.emit(ToolError(tool_call_id="c", tool_name="bash", error="x", elapsed_ms=1))
    assert runner.liveness.last_tool_phase == "error"
    assert runner.liveness.round_count == 2
    assert runner.liveness.last_event_at is not None


def test_cancel_is_requested_once() -> None:
    runner, _ = _runner()
    assert runner.request_cancel("first") is True
    assert runner.request_cancel("second") is False
    assert runner.cancel_reason == "first"


async def test_a_terminal_event_is_held_until_it_is_stored_even_within_the_reservation() -> None:
    """Review finding 1: a client must never see a run end that the store then refuses."""
    from culm.domain.events import Complete
    from culm.domain.models import Usage

    pending: list[tuple[RunEvent, bool]] = []
    delivered: list[RunEvent] = []
    run = Run(run_id="r", session_id="s", model="scripted:echo")
    runner = Runner(
        run,
        persist=lambda e, u: pending.append((e, u)),
        fan_out_session=delivered.append,
        queue_size=10,
    )
    first = runner.emit(Token(content="a"))
    runner.stored(first)  # reserves SEQ_RESERVE seqs past 1
    second = runner.emit(Token(content="b"))
    end = runner.emit(Complete(usage=Usage(), final_message="done"))
    assert pending[-1] == (end, True)  # held: its write is urgent
    assert delivered == [first, second]
    runner.stored(second)  # a later reservation does not cover the terminal event
    assert delivered == [first, second]
    runner.stored(end)
    assert delivered == [first, second, end]


async def test_while_the_lease_is_in_doubt_only_stored_events_are_shown() -> None:
    """Review finding 2: a worker whose lease may be gone (stalled past it, or a failing store
    it stopped renewing for) shows no event the store does not hold, reservation or not."""
    pending: list[tuple[RunEvent, bool]] = []
    delivered: list[RunEvent] = []
    run = Run(run_id="r", session_id="s", model="scripted:echo")
    runner = Runner(
        run,
        persist=lambda e, u: pending.append((e, u)),
        fan_out_session=delivered.append,
        queue_size=10,
    )
    first = runner.emit(Token(content="a"))
    runner.stored(first)  # reserves SEQ_RESERVE seqs past 1
    assert delivered == [first]
    runner.may_show_early = lambda: False
    second = runner.emit(Token(content="b"))
    third = runner.emit(Token(content="c"))
    assert pending[-2:] == [(second, True), (third, True)]  # held: urgent writes
    assert delivered == [first]
    runner.stored(second)  # only what is stored goes, though the reservation covers more
    assert delivered == [first, second]
    runner.may_show_early = lambda: True
    fourth = runner.emit(Token(content="d"))  # held behind the third: order is kept
    assert delivered == [first, second]
    runner.stored(third)
    assert delivered == [first, second, third, fourth]


async def test_a_cancel_before_the_first_step_is_recorded_and_after_it_cancels_the_task() -> None:
    runner, _ = _runner()
    runner.task = asyncio.ensure_future(asyncio.sleep(0))
    assert runner.request_cancel("early") is True
    await runner.task
    assert not runner.task.cancelled()  # the task reads cancel_reason at its first step

    runner, _ = _runner()
    runner.task = asyncio.ensure_future(asyncio.sleep(60))
    runner.started = True
    assert runner.request_cancel("now") is True
    cancelling = runner.task.cancelling()
    runner.task.cancel()  # ends it either way: the count above is the check
    assert cancelling == 1


async def test_a_finalizing_run_is_not_cancelled() -> None:
    runner, _ = _runner()
    runner.finalizing = True
    assert runner.request_cancel("late") is False
    assert runner.cancel_reason is None


async def test_a_detached_subscriber_gets_nothing_more() -> None:
    runner, _ = _runner()
    gone, staying = runner.attach(0), runner.attach(0)
    assert gone is not None and staying is not None
    runner.detach(gone)
    assert runner.subscriber_count == 1
    runner.emit(Token(content="x"))
    assert [e.seq for e in await staying.next_batch()] == [1]
    assert list(gone._items) == []


async def test_a_held_stamp_takes_the_next_seq_and_is_delivered_once_stored() -> None:
    delivered: list[RunEvent] = []
    run = Run(run_id="r", session_id="s", model="scripted:echo", last_seq=4)
    runner = Runner(run, persist=lambda e, u: None, fan_out_session=delivered.append, queue_size=10)
    held = runner.stamp_held(Token(content="asked"))
    assert (held.seq, held.run_id, held.session_id, runner.last_seq) == (5, "r", "s", 5)
    assert held.ts is not None and held.content == "asked"  # type: ignore[union-attr]
    assert delivered == []
    runner.stored(held)
    assert delivered == [held]


async def test_a_resumed_runs_runner_sends_every_older_cursor_to_the_store() -> None:
    """A runner of a run resumed at seq 5 has delivered nothing yet: its ring is empty."""
    run = Run(run_id="r", session_id="s", model="scripted:echo", last_seq=5)
    runner = Runner(run, persist=lambda e, u: None, fan_out_session=lambda e: None, queue_size=4)
    assert [runner.attach(after) for after in (0, 3, 4)] == [None, None, None]
    assert runner.attach(5) is not None


async def test_a_new_runner_is_pending_with_nothing_started_stored_or_ended() -> None:
    run = Run(run_id="r", session_id="s", model="scripted:echo", last_seq=5, round_count=3)
    runner = Runner(run, persist=lambda e, u: None, fan_out_session=lambda e: None, queue_size=4)
    assert runner.status is RunStatus.PENDING
    assert (runner.task, runner.started_at, runner.completed_at) == (None, None, None)
    assert (runner.storage_error, runner.finalizing_since, runner.last_budget_event) == (
        None,
        None,
        None,
    )
    assert not (runner.started or runner.ended_in_store or runner.end_stored or runner.finalizing)
    assert runner.lease_until == math.inf
    assert runner.usage == Usage()
    assert (runner.liveness.last_seq, runner.liveness.round_count) == (5, 3)
