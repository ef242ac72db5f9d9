"""The registry of runners and subscribers alone: who gets which event, who is woken, and that a
subscriber that leaves leaves nothing behind."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from culm.domain.events import RunEvent, Token
from culm.domain.models import Run
from culm.domain.time import utc_now
from culm.runtime.registry import RunnerRegistry
from culm.runtime.runner import Runner
from culm.runtime.subscription import Closed, Subscription

# In memory only: nothing here touches a database.
pytestmark = pytest.mark.backends("sqlite")


def _event(run_id: str, session_id: str, seq: int = 1) -> RunEvent:
    return Token(content="x").stamped(seq=seq, run_id=run_id, session_id=session_id, ts=utc_now())


def _runner(registry: RunnerRegistry, run_id: str = "r", session_id: str = "s") -> Runner:
    run = Run(run_id=run_id, session_id=session_id, model="scripted:echo")
    return Runner(
        run, persist=lambda e, u: None, fan_out_session=registry.fan_out_session, queue_size=8
    )


def _seqs(subscription: Subscription) -> list[tuple[str, int]]:
    """What is queued, without waiting."""
    return [(event.run_id, event.seq) for event in subscription._items]


async def _woken(subscription: Subscription) -> bool:
    """Whether the reader's next batch returns at once, empty (a wake), rather than wait."""
    reader = asyncio.ensure_future(subscription.next_batch())
    for _ in range(3):
        await asyncio.sleep(0)
    if reader.done():
        return reader.result() == []
    reader.cancel()
    return False


async def test_deliver_feeds_the_runs_followers_and_its_sessions_subscribers() -> None:
    registry = RunnerRegistry()
    follower, other_run, session, other_session = (Subscription(8) for _ in range(4))
    registry.add_remote_subscriber("r", follower)
    registry.add_remote_subscriber("r2", other_run)
    registry.add_session_subscriber("s", session)
    registry.add_session_subscriber("s2", other_session)
    registry.deliver([_event("r", "s", 1), _event("unfollowed", "s", 1), _event("r", "s", 2)])
    assert _seqs(follower) == [("r", 1), ("r", 2)]
    assert _seqs(session) == [("r", 1), ("unfollowed", 1), ("r", 2)]
    assert _seqs(other_run) == _seqs(other_session) == []


async def test_a_removed_subscriber_gets_nothing_and_leaves_no_entry() -> None:
    registry = RunnerRegistry()
    follower, staying, session, session_staying = (Subscription(8) for _ in range(4))
    registry.add_remote_subscriber("r", follower)
    registry.add_remote_subscriber("r", staying)
    registry.add_session_subscriber("s", session)
    registry.add_session_subscriber("s", session_staying)
    registry.remove_remote_subscriber("r", follower)
    registry.remove_session_subscriber("s", session)
    registry.deliver([_event("r", "s")])
    assert _seqs(follower) == _seqs(session) == []
    assert _seqs(staying) == _seqs(session_staying) == [("r", 1)]
    registry.remove_remote_subscriber("r", staying)
    registry.remove_session_subscriber("s", session_staying)
    registry.remove_remote_subscriber("gone", staying)  # unknown: nothing happens
    registry.remove_session_subscriber("gone", session_staying)
    assert registry._remote_subscribers == {}
    assert registry._session_subscribers == {}


async def test_a_runner_arriving_or_leaving_wakes_the_runs_followers_and_watchers() -> None:
    registry = RunnerRegistry()
    follower, elsewhere = Subscription(8), Subscription(8)
    registry.add_remote_subscriber("r", follower)
    registry.add_remote_subscriber("r2", elsewhere)
    runner = _runner(registry)
    with registry.watch("r") as changed:
        registry.add(runner)
        assert changed.is_set()
    assert registry.get("r") is runner and registry.for_session("s") is runner
    assert await _woken(follower)
    assert not await _woken(elsewhere)
    with registry.watch("r") as changed:
        registry.remove(runner)
        assert changed.is_set()
    assert await _woken(follower)
    assert registry.get("r") is None and registry.for_session("s") is None
    assert registry._changes == {}


async def test_removing_an_earlier_attempt_keeps_the_later_one() -> None:
    registry = RunnerRegistry()
    earlier, later = _runner(registry), _runner(registry)
    registry.add(earlier)
    registry.add(later)
    registry.remove(earlier)
    assert registry.get("r") is later and registry.for_session("s") is later
    assert len(registry) == 1 and registry.run_ids() == {"r"}


async def test_a_watch_entry_lives_until_its_last_watcher_leaves() -> None:
    registry = RunnerRegistry()
    with registry.watch("r") as first, registry.watch("r") as second:
        assert first is second
    assert registry._changes == {}
    with registry.watch("r"):
        assert "r" in registry._changes


async def test_a_bus_change_wakes_every_follower_and_session_subscriber() -> None:
    registry = RunnerRegistry()
    follower, session = Subscription(8), Subscription(8)
    registry.add_remote_subscriber("r", follower)
    registry.add_session_subscriber("s", session)
    registry.bus_changed()
    assert await _woken(follower)
    assert await _woken(session)


async def test_publish_hands_stored_events_to_runners_then_every_observer() -> None:
    registry = RunnerRegistry()
    runner = _runner(registry)
    registry.add(runner)
    seen: list[Sequence[RunEvent]] = []

    def failing(events: Sequence[RunEvent]) -> None:
        raise RuntimeError("an observer's bug")

    registry.observers.extend([failing, seen.append])
    event = runner.emit(Token(content="x"))
    registry.publish([event, _event("elsewhere", "s2")])
    assert runner.liveness.last_seq == 1  # the runner learnt it is stored
    assert [[e.run_id for e in batch] for batch in seen] == [["r", "elsewhere"]]


async def test_close_streams_closes_every_subscription_and_wakes_watchers() -> None:
    registry = RunnerRegistry()
    runner = _runner(registry)
    registry.add(runner)
    attached = runner.attach(0)
    assert attached is not None
    follower, session = Subscription(8), Subscription(8)
    registry.add_remote_subscriber("r2", follower)
    registry.add_session_subscriber("s", session)
    with registry.watch("r3") as changed:
        registry.close_streams()
        assert changed.is_set()
    for subscription in (attached, follower, session):
        with pytest.raises(Closed):
            await asyncio.wait_for(subscription.next_batch(), 5)
