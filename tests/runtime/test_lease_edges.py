"""Edges of the heartbeat (``culm.runtime.lease``) beside ``test_lease.py``: the boundary of
half a lease, how long a renewal is trusted for, a cancel notice on the bus, and what the
operator reads in the log when a step fails or a lease is lost (real SQLite store)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import culm
from culm.bus.local import LocalBus
from culm.errors import StorageUnavailableError
from culm.runtime.dispatch import WorkerCounters
from culm.runtime.lease import Heartbeat
from culm.runtime.ownership import boot_id, pid_namespace
from culm.storage.base import SweepPolicy
from tests.runtime.test_lease import Holder, RecordingStore, _dead_pid, _owned_run, store
from tests.support import settings

__all__ = ["store"]  # the fixture, shared with test_lease.py

LEASE = 10.0


def _heartbeat(
    store: RecordingStore, tmp_path: Path, owner: str, holder: Holder, **kwargs: object
) -> Heartbeat:
    return Heartbeat(
        store,
        owner=owner,
        kind="worker",
        settings=settings(tmp_path, lease_seconds=LEASE, heartbeat_seconds=3600),
        holder=holder.holder(),
        counters=WorkerCounters(),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_failing_for_exactly_half_a_lease_still_renews_past_it_logs_why_not(
    store: RecordingStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="culm.runtime.lease")
    run = await _owned_run(store, tmp_path, "w1")
    holder = Holder({run.run_id: run.epoch})
    heartbeat = _heartbeat(store, tmp_path, "w1", holder)
    holder.failing_for = LEASE / 2
    await heartbeat.renew()
    assert store.renewed == [{run.run_id: run.epoch}]
    assert not caplog.records
    holder.failing_for = 6.5
    await heartbeat.renew()
    assert store.renewed == [{run.run_id: run.epoch}]
    assert [r.getMessage() for r in caplog.records] == [
        "not renewing leases: storing run events keeps failing seconds=6.5"
    ]


async def test_a_renewed_lease_is_trusted_for_a_lease_from_before_the_write(
    store: RecordingStore, tmp_path: Path
) -> None:
    run = await _owned_run(store, tmp_path, "w1")
    holder = Holder({run.run_id: run.epoch})
    renewed: list[tuple[dict[str, int], float]] = []
    heartbeat = Heartbeat(
        store,
        owner="w1",
        kind="worker",
        settings=settings(tmp_path, lease_seconds=LEASE),
        holder=dataclasses.replace(
            holder.holder(), renewed=lambda fences, until: renewed.append((dict(fences), until))
        ),
        counters=WorkerCounters(),
    )
    before = time.monotonic()
    await heartbeat.renew()
    after = time.monotonic()
    [(fences, until)] = renewed
    assert fences == {run.run_id: run.epoch}
    assert before + LEASE <= until <= after + LEASE


async def test_a_lost_lease_is_logged_with_its_runs(
    store: RecordingStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="culm.runtime.lease")
    taken = await _owned_run(store, tmp_path, "w1b")
    holder = Holder({taken.run_id: taken.epoch})
    heartbeat = _heartbeat(store, tmp_path, "w1b", holder)
    policy = SweepPolicy(requeue=False, max_attempts=3, lease_seconds=LEASE)
    await store.sweep("other", policy, dead_owners=["w1b"])
    await heartbeat.renew()
    assert holder.lost == [(taken.run_id, taken.epoch)]
    assert [r.getMessage() for r in caplog.records] == [
        f"lease lost: cancelling runs here, writing nothing runs=['{taken.run_id}']"
    ]


async def test_a_cancel_notice_on_the_bus_reaches_the_holder(
    store: RecordingStore, tmp_path: Path
) -> None:
    bus = LocalBus()
    holder = Holder({})
    heartbeat = _heartbeat(store, tmp_path, "w1", holder, bus=bus, sweeps=False)
    await heartbeat.start()
    try:
        assert await bus.send_cancel("w1", "run-1", "stopped by the operator")
        assert not await bus.send_cancel("w2", "run-2", "not this process's")
    finally:
        await heartbeat.aclose()
    assert holder.cancel_requested == {"run-1": "stopped by the operator"}


async def test_a_failing_step_is_logged_and_the_others_still_run(
    store: RecordingStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.ERROR, logger="culm.runtime.lease")
    run = await _owned_run(store, tmp_path, "w1")
    holder = Holder({run.run_id: run.epoch})
    heartbeat = _heartbeat(store, tmp_path, "w1", holder)
    await store.register_worker(
        "w1", host="h", pid=1, boot_id=None, pid_namespace=None, kind="worker", concurrency=1
    )

    async def broken(*args: object, **kwargs: object) -> list[object]:
        raise RuntimeError("sweep broke")

    monkeypatch.setattr(store, "sweep", broken)
    await heartbeat.beat()
    assert store.renewed == [{run.run_id: run.epoch}]  # the step before
    assert heartbeat.claimers == ("w1",)  # the step after: the row written, the list read
    assert [r.getMessage() for r in caplog.records] == [
        "heartbeat step failed step=sweep error=sweep broke"
    ]


async def test_without_fast_restart_a_dead_process_here_waits_out_its_lease(
    store: RecordingStore, tmp_path: Path
) -> None:
    """As on PostgreSQL: a dead owner is found by its lease only, even on this machine."""
    await store.register_worker(
        "dead-here",
        host=socket.gethostname(),
        pid=_dead_pid(),
        boot_id=boot_id(),
        pid_namespace=pid_namespace(),
        kind="embedded",
        concurrency=1,
    )
    run = await _owned_run(store, tmp_path, "dead-here")
    heartbeat = _heartbeat(store, tmp_path, "me", Holder({}))  # fast_restart=False
    await heartbeat.start()
    try:
        stored = await store.get_run(run.run_id)
        workers = await store.list_workers(lease_seconds=LEASE, include_stopped=True)
    finally:
        await heartbeat.aclose()
    assert stored is not None and stored.status is culm.RunStatus.PENDING
    assert {w.worker_id for w in workers if w.stopped_at is not None} == set()


def _beating() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "culm-heartbeat" and not t.done()]


async def test_closing_stops_the_beat_and_marks_the_worker_stopped(
    store: RecordingStore, tmp_path: Path
) -> None:
    heartbeat = _heartbeat(store, tmp_path, "w1", Holder({}), sweeps=False)
    await heartbeat.start()
    assert len(_beating()) == 1
    await heartbeat.aclose()
    assert _beating() == []
    [worker] = await store.list_workers(lease_seconds=LEASE, include_stopped=True)
    assert worker.worker_id == "w1" and worker.stopped_at is not None


async def test_closing_with_the_store_down_still_tries_each_step_and_logs(
    store: RecordingStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.ERROR, logger="culm.runtime.lease")
    heartbeat = _heartbeat(store, tmp_path, "w1", Holder({}), sweeps=False)
    await heartbeat.start()
    tried: list[str] = []

    def down(name: str) -> Callable[..., Awaitable[None]]:
        async def fail(*args: object, **kwargs: object) -> None:
            tried.append(name)
            raise StorageUnavailableError("database unreachable")

        return fail

    for name in ("worker_heartbeat", "stop_worker"):
        monkeypatch.setattr(store, name, down(name))
    await heartbeat.aclose()  # raises nothing: the process is stopping anyway
    assert tried == ["worker_heartbeat", "stop_worker"]
    assert [r.getMessage() for r in caplog.records] == ["marking this worker stopped failed"]
    assert caplog.records[0].exc_info is not None


async def test_a_sweep_counts_and_logs_each_run_it_took_over(
    store: RecordingStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="culm.runtime.lease")
    run = await _owned_run(store, tmp_path, "gone")
    counters = WorkerCounters(takeovers=2)
    heartbeat = Heartbeat(
        store,
        owner="me",
        kind="worker",
        settings=settings(tmp_path, lease_seconds=LEASE),
        holder=Holder({}).holder(),
        counters=counters,
    )
    await heartbeat.sweep(["gone"])
    assert counters.takeovers == 3  # added to what it counted before
    taken = await store.get_run(run.run_id)
    assert taken is not None and taken.status.is_terminal
    assert [r.getMessage() for r in caplog.records] == [
        f"took over a run whose owner is gone run_id={run.run_id} status={taken.status}"
    ]


async def test_a_beat_writes_the_row_and_lists_the_live_claiming_processes(
    store: RecordingStore, tmp_path: Path
) -> None:
    holder = Holder({"run-a": 1, "run-b": 1})  # two runs here (their renewal finds nothing)
    counters = WorkerCounters(claims=3, takeovers=4, fenced_writes=5)
    heartbeat = Heartbeat(
        store,
        owner="w2",
        kind="worker",
        settings=settings(tmp_path, lease_seconds=LEASE, heartbeat_seconds=3600),
        holder=holder.holder(),
        counters=counters,
        sweeps=False,
    )
    for worker_id, kind in (("w1", "embedded"), ("api", "api"), ("gone", "worker")):
        await store.register_worker(
            worker_id, host="h", pid=1, boot_id=None, pid_namespace=None, kind=kind, concurrency=1
        )
    await store.stop_worker("gone")
    await heartbeat.start()
    try:
        await heartbeat.beat()
        row = await store.get_worker("w2")
    finally:
        await heartbeat.aclose()
    assert row is not None
    assert (row.active_runs, row.claims, row.takeovers, row.fenced_writes) == (2, 3, 4, 5)
    assert heartbeat.claimers == ("w1", "w2")  # sorted; not the API, not the stopped one


async def test_a_heartbeat_never_started_lists_no_claimer_and_closes_cleanly(
    store: RecordingStore, tmp_path: Path
) -> None:
    """The engine closes what it opened even when its start failed half-way."""
    heartbeat = _heartbeat(store, tmp_path, "w1", Holder({}))
    assert heartbeat.claimers == ()
    await heartbeat.aclose()  # no task to stop, no row to write: nothing raised
