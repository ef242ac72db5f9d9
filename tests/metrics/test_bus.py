"""The bounded bus: emit never blocks, overflow is dropped and counted, one episode at a time.

It queues events as changes (plain values the garbage collector does not track)."""

from __future__ import annotations

from culm.metrics.bus import MetricsBus
from culm.metrics.events import WorkerStarted


def test_emit_queues_until_full_then_drops_and_counts() -> None:
    bus = MetricsBus(3, batch_size=10)
    accepted = [bus.emit(WorkerStarted()) for _ in range(5)]
    assert accepted == [True, True, True, False, False]
    assert (len(bus), bus.accepted, bus.dropped) == (3, 3, 2)


def test_a_drop_episode_is_handed_out_once_when_the_queue_has_drained() -> None:
    bus = MetricsBus(2, batch_size=10)
    for _ in range(5):
        bus.emit(WorkerStarted())
    assert bus.end_drop_episode() == 0  # still under pressure: the queue is not empty
    bus.take(1)
    bus.emit(WorkerStarted())
    bus.emit(WorkerStarted())  # dropped again: the same episode
    assert bus.end_drop_episode() == 0
    assert len(bus.take(10)) == 2
    assert bus.end_drop_episode() == 4
    assert bus.end_drop_episode() == 0
    assert bus.dropped == 4


def test_take_is_oldest_first_and_bounded() -> None:
    bus = MetricsBus(10, batch_size=10)
    events = [WorkerStarted() for _ in range(4)]
    for event in events:
        bus.emit(event)
    ids = [event.meta.event_id for event in events]
    assert [key for _, key, _ in bus.take(3)] == ids[:3]  # queued as changes
    assert [key for _, key, _ in bus.take(3)] == ids[3:]
    assert bus.take(3) == []


def test_drain_drops_ends_the_open_episode_whatever_is_queued() -> None:
    bus = MetricsBus(1, batch_size=10)
    bus.emit(WorkerStarted())
    bus.emit(WorkerStarted())
    assert bus.drain_drops() == 1
    assert bus.drain_drops() == 0


def test_queued_values_are_not_tracked_by_the_garbage_collector() -> None:
    import gc

    from culm.metrics.events import RoundCompleted, RoundStatus

    bus = MetricsBus(10, batch_size=10)
    bus.emit(RoundCompleted(round_id="r", session_id="s", status=RoundStatus.SUCCESS, latency_ms=1))
    gc.collect()
    (queued,) = bus.take(1)
    kind, key, values = queued
    assert (kind, key) == ("round_completed", "r")
    assert not gc.is_tracked(values)  # one tracked tuple per queued event, nothing in it
