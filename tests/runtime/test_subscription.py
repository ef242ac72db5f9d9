"""A subscriber's bounded queue alone: its bound at N and N+1, lag, wake, close."""

from __future__ import annotations

import asyncio

import pytest

from culm.domain.events import RunEvent, Token
from culm.domain.time import utc_now
from culm.runtime.subscription import Closed, Lagged, Subscription

# In memory only: nothing here touches a database.
pytestmark = pytest.mark.backends("sqlite")


def _event(seq: int) -> RunEvent:
    return Token(content=str(seq)).stamped(seq=seq, run_id="r", session_id="s", ts=utc_now())


async def _pending(waiting: Subscription | asyncio.Future[list[RunEvent]]) -> bool:
    """Whether a reader's ``next_batch`` still waits after the loop has run everything ready
    (nothing to return, nothing to raise); a waiting reader made here is cancelled."""
    own = isinstance(waiting, Subscription)
    reader = asyncio.ensure_future(waiting.next_batch()) if own else waiting
    for _ in range(3):
        await asyncio.sleep(0)
    pending = not reader.done()
    if own or pending:
        reader.cancel()
    return pending


async def test_the_initial_backlog_is_the_first_batch() -> None:
    subscription = Subscription(4, [_event(1), _event(2)])
    assert [e.seq for e in await subscription.next_batch()] == [1, 2]
    assert await _pending(subscription)


async def test_a_queue_of_n_holds_n_events_and_lags_at_n_plus_one() -> None:
    full = Subscription(3)
    for seq in (1, 2, 3):
        full.push(_event(seq))
    assert not full.lagged
    assert [e.seq for e in await full.next_batch()] == [1, 2, 3]

    over = Subscription(3)
    for seq in (1, 2, 3, 4):
        over.push(_event(seq))
    assert over.lagged
    over.push(_event(5))  # ignored: the reader resumes from the store anyway
    with pytest.raises(Lagged):
        await over.next_batch()
    with pytest.raises(Lagged):
        await over.next_batch()  # and stays lagged


async def test_an_overflow_wakes_a_waiting_reader_with_lagged() -> None:
    subscription = Subscription(1)
    reader = asyncio.ensure_future(subscription.next_batch())
    await asyncio.sleep(0)
    subscription.push(_event(1))
    assert [e.seq for e in await reader] == [1]
    reader = asyncio.ensure_future(subscription.next_batch())
    await asyncio.sleep(0)
    subscription.push(_event(2))
    subscription.push(_event(3))
    with pytest.raises(Lagged):
        await asyncio.wait_for(reader, 5)


async def test_a_drained_queue_makes_the_reader_wait_for_the_next_push() -> None:
    subscription = Subscription(4)
    subscription.push(_event(1))
    assert [e.seq for e in await subscription.next_batch()] == [1]
    assert await _pending(subscription)
    subscription.push(_event(2))
    assert [e.seq for e in await subscription.next_batch()] == [2]


async def test_wake_returns_one_empty_batch_then_waits_again() -> None:
    subscription = Subscription(4)
    reader = asyncio.ensure_future(subscription.next_batch())
    await asyncio.sleep(0)
    subscription.wake()
    assert await asyncio.wait_for(reader, 5) == []
    assert await _pending(subscription)


async def test_a_wake_with_events_queued_is_spent_by_that_batch() -> None:
    subscription = Subscription(4)
    subscription.push(_event(1))
    subscription.wake()
    assert [e.seq for e in await subscription.next_batch()] == [1]
    assert await _pending(subscription)  # no empty batch left over


async def test_close_delivers_what_is_queued_then_raises_closed() -> None:
    subscription = Subscription(4)
    subscription.push(_event(1))
    subscription.close()
    assert [e.seq for e in await subscription.next_batch()] == [1]
    reader = asyncio.ensure_future(subscription.next_batch())
    assert not await _pending(reader)
    with pytest.raises(Closed):
        await reader


async def test_close_wakes_a_waiting_reader() -> None:
    subscription = Subscription(4)
    reader = asyncio.ensure_future(subscription.next_batch())
    await asyncio.sleep(0)
    subscription.close()
    assert not await _pending(reader)
    with pytest.raises(Closed):
        await reader


async def test_a_lagged_subscription_closed_since_still_says_lagged() -> None:
    """It must read what it missed from the store, not end as if it had everything."""
    subscription = Subscription(1)
    subscription.push(_event(1))
    subscription.push(_event(2))
    subscription.close()
    with pytest.raises(Lagged):
        await subscription.next_batch()
