"""The worker: batches by size or interval, flushes on shutdown, survives its store failing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from culm.metrics.batch import Change
from culm.metrics.bus import MetricsBus
from culm.metrics.events import SessionStarted
from culm.metrics.queries import MetricsQueries
from culm.metrics.reports import MetricsWorkerState
from culm.metrics.store import MetricsStore
from culm.metrics.worker import MetricsWorker

NEVER = 3600.0  # a flush interval no test waits for


def event(n: int) -> SessionStarted:
    return SessionStarted(session_id=f"s{n}", model="m")


@dataclass
class FakeStore:
    """Records written batches of changes; ``fail`` decides whether a batch fails."""

    writes: list[list[Change]] = field(default_factory=list)
    fail: Callable[[Sequence[Change]], bool] = lambda batch: False
    gate: asyncio.Event | None = None

    async def write(self, batch: Sequence[Change]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail(batch):
            raise RuntimeError("database is locked")
        self.writes.append(list(batch))

    def written(self, kind: str = "session_started") -> list[dict[str, Any]]:
        """The values of the written changes of ``kind`` (a system event's type works too)."""
        return [
            values
            for batch in self.writes
            for change_kind, _, values in batch
            if kind in (change_kind, values.get("type"))
        ]

    def types(self) -> list[str]:
        return [values.get("type", kind) for batch in self.writes for kind, _, values in batch]


@dataclass
class Harness:
    bus: MetricsBus
    store: FakeStore
    worker: MetricsWorker


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


def harness(
    store: FakeStore, *, capacity: int = 1000, batch_size: int = 3, **kwargs: object
) -> Harness:
    bus = MetricsBus(capacity, batch_size=batch_size)
    options = {"flush_interval": NEVER, "max_attempts": 3, "retry_delay": 0.0, **kwargs}
    worker = MetricsWorker(bus, store.write, batch_size=batch_size, **options)  # type: ignore[arg-type]
    return Harness(bus, store, worker)


@pytest.fixture
async def h(store: FakeStore) -> AsyncIterator[Harness]:
    running = harness(store)
    running.worker.start()
    yield running
    await running.worker.aclose()


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.001)


async def test_a_full_batch_is_written_without_waiting_for_the_interval(h: Harness) -> None:
    for n in range(7):
        h.bus.emit(event(n))
    await until(lambda: len(h.store.written()) == 6)
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(h.store.written()) == 6  # the seventh waits for a full batch or the interval
    assert [len([c for c in b if c[0] == "session_started"]) for b in h.store.writes] == [3, 3]


async def test_a_partial_batch_is_written_after_the_interval(
    metrics_store: MetricsStore, queries: MetricsQueries
) -> None:
    """On the real store: one event, a batch of 100, nobody flushes — the interval writes it."""
    bus = MetricsBus(1000, batch_size=100)
    worker = MetricsWorker(
        bus, metrics_store.write_changes, batch_size=100, flush_interval=0.01, max_attempts=3
    )
    worker.start()
    try:
        bus.emit(SessionStarted(session_id="interval", model="m"))
        async with asyncio.timeout(10):
            while (found := await queries.session("interval")) is None:
                await asyncio.sleep(0.01)
        assert found.session_id == "interval"
        assert worker.state is MetricsWorkerState.RUNNING
    finally:
        await worker.aclose()


async def test_flush_returns_once_everything_emitted_is_written(h: Harness) -> None:
    for n in range(5):
        h.bus.emit(event(n))
    await h.worker.flush()
    assert [e["session_id"] for e in h.store.written()] == [f"s{n}" for n in range(5)]


async def test_shutdown_writes_everything_then_worker_stopped(store: FakeStore) -> None:
    running = harness(store)
    running.worker.start()
    for n in range(10):
        running.bus.emit(event(n))
    await running.worker.aclose()
    types = store.types()
    assert types[0] == "worker_started" and types[-1] == "worker_stopped"
    assert len(store.written()) == 10
    assert running.worker.state is MetricsWorkerState.STOPPED


async def test_a_failed_write_is_retried_and_recorded_as_a_storage_error(store: FakeStore) -> None:
    failures = iter([True, True])
    store.fail = lambda batch: next(failures, False)
    running = harness(store)
    running.worker.start()
    for n in range(3):
        running.bus.emit(event(n))
    await running.worker.flush()
    assert len(store.written()) == 3
    errors = store.written("storage_error")
    assert len(errors) == 2
    assert all(e["event_type"] == "session_started" and "locked" in e["error"] for e in errors)
    assert running.worker.storage_errors == 2
    assert running.worker.state is MetricsWorkerState.RUNNING
    await running.worker.aclose()


async def test_an_event_the_store_rejects_is_dropped_alone(store: FakeStore) -> None:
    poison = event(666)
    store.fail = lambda batch: any(v["session_id"] == "s666" for k, _, v in batch if k != "system")
    running = harness(store, batch_size=8)
    running.worker.start()
    for n in range(7):
        running.bus.emit(event(n) if n != 3 else poison)
    await running.worker.flush()
    running.bus.emit(event(99))  # the worker lives on
    await running.worker.aclose()
    assert sorted(e["session_id"] for e in store.written()) == sorted(
        [f"s{n}" for n in (0, 1, 2, 4, 5, 6, 99)]
    )
    drops = store.written("metrics_dropped")
    assert [(d["count"], d["reason"]) for d in drops] == [(1, "storage_failed")]


async def test_one_metrics_dropped_is_recorded_when_pressure_passes(store: FakeStore) -> None:
    store.gate = asyncio.Event()  # the store hangs: the queue fills
    running = harness(store, capacity=2, batch_size=1)
    running.worker.start()
    running.bus.emit(event(0))
    await until(lambda: len(running.bus) == 0)  # taken; its write is stuck at the gate
    accepted = [running.bus.emit(event(n)) for n in range(1, 8)]
    assert accepted == [True, True] + [False] * 5
    store.gate.set()
    await running.worker.flush()
    await running.worker.aclose()
    drops = store.written("metrics_dropped")
    assert [(d["count"], d["reason"]) for d in drops] == [(5, "queue_full")]
    assert len(store.written()) == 3


async def test_a_dead_store_cannot_hang_the_shutdown(store: FakeStore) -> None:
    store.fail = lambda batch: True
    running = harness(store, batch_size=2)
    running.worker.start()
    for n in range(9):
        running.bus.emit(event(n))
    async with asyncio.timeout(10):
        await running.worker.aclose()
    assert running.worker.storage_dropped == 9
    assert running.worker.state is MetricsWorkerState.STOPPED
