"""The heartbeat: renewal by fence, no renewal while the event writer fails, the fast-restart
takeover that trusts a pid only on the same host, boot and PID namespace (real SQLite store)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

import culm
from culm.domain.models import Run, Session
from culm.runtime.dispatch import WorkerCounters
from culm.runtime.lease import Heartbeat, LeaseHolder
from culm.runtime.ownership import boot_id, pid_namespace
from culm.storage.base import Renewal, SweepPolicy
from culm.storage.sql import SqlStore
from tests.support import collect, settings


class RecordingStore(SqlStore):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.renewed: list[dict[str, int]] = []

    async def renew_leases(
        self, owner: str, fences: Mapping[str, int], lease_seconds: float
    ) -> Renewal:
        self.renewed.append(dict(fences))
        return await super().renew_leases(owner, fences, lease_seconds)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[RecordingStore]:
    store = RecordingStore(f"sqlite+aiosqlite:///{tmp_path / 'culm.db'}")
    await store.start()
    try:
        yield store
    finally:
        await store.aclose()


class Holder:
    def __init__(self, fences: dict[str, int]) -> None:
        self.fences = fences
        self.failing_for = 0.0
        self.lost: list[tuple[str, int]] = []  # (run_id, epoch renewed)
        self.cancel_requested: dict[str, str] = {}

    def holder(self) -> LeaseHolder:
        return LeaseHolder(
            fences=lambda: self.fences,
            cancel_requested=self.cancel_requested.update,
            lost=self.lost.extend,
            active_runs=lambda: len(self.fences),
            store_failing_for=lambda: self.failing_for,
        )


async def _owned_run(store: SqlStore, tmp_path: Path, owner: str) -> Run:
    session = Session(session_id=f"session-{owner}", model="m", workspace=str(tmp_path))
    await store.create_session(session)
    run = Run(run_id=f"run-{owner}", session_id=session.session_id, model="m")
    return (await store.reserve_run(run, queue=False, owner=owner, lease_seconds=60)).run


def _heartbeat(
    store: SqlStore, tmp_path: Path, owner: str, holder: Holder, **overrides: object
) -> Heartbeat:
    return Heartbeat(
        store,
        owner=owner,
        kind="worker",
        settings=settings(tmp_path, lease_seconds=10.0, **overrides),
        holder=holder.holder(),
        counters=WorkerCounters(),
        fast_restart=True,
    )


async def test_no_lease_is_renewed_while_the_event_writer_fails_past_half_a_lease(
    store: RecordingStore, tmp_path: Path
) -> None:
    run = await _owned_run(store, tmp_path, "w1")
    holder = Holder({run.run_id: run.epoch})
    heartbeat = _heartbeat(store, tmp_path, "w1", holder)
    holder.failing_for = 4.9  # under half the 10 s lease: renewed
    await heartbeat.renew()
    assert store.renewed == [{run.run_id: 1}]
    holder.failing_for = 5.1  # over: its runs must be taken over, not kept
    await heartbeat.renew()
    assert store.renewed == [{run.run_id: 1}]
    assert holder.lost == []


async def test_a_renewal_reports_runs_taken_over_and_cancel_requests(
    store: RecordingStore, tmp_path: Path
) -> None:
    kept = await _owned_run(store, tmp_path, "w1")
    taken = await _owned_run(store, tmp_path, "w1b")
    holder = Holder({kept.run_id: kept.epoch, taken.run_id: taken.epoch})
    heartbeat = _heartbeat(store, tmp_path, "w1", holder)
    policy = SweepPolicy(requeue=False, max_attempts=3, lease_seconds=10.0)
    assert [r.run_id for r in await store.sweep("other", policy, dead_owners=["w1b"])] == [
        taken.run_id
    ]
    await store.request_cancel(kept.run_id, "please stop")
    await heartbeat.renew()
    assert holder.lost == [(taken.run_id, 1)]  # the attempt it renewed, not a later one
    assert holder.cancel_requested == {kept.run_id: "please stop"}


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


async def test_fast_restart_takes_over_only_a_dead_process_of_this_host_boot_and_namespace(
    store: RecordingStore, tmp_path: Path
) -> None:
    host, pid = socket.gethostname(), _dead_pid()
    assert boot_id() is not None and pid_namespace() is not None
    rows = {
        "dead-here": (host, boot_id(), pid_namespace()),
        "other-namespace": (host, boot_id(), "another-namespace"),
        "other-boot": (host, "another-boot", pid_namespace()),
        "other-host": (host + "-b", boot_id(), pid_namespace()),
    }
    for worker_id, (worker_host, boot, namespace) in rows.items():
        await store.register_worker(
            worker_id,
            host=worker_host,
            pid=pid,
            boot_id=boot,
            pid_namespace=namespace,
            kind="embedded",
            concurrency=1,
        )
        await _owned_run(store, tmp_path, worker_id)
    heartbeat = _heartbeat(store, tmp_path, "me", Holder({}), heartbeat_seconds=3600)
    await heartbeat.start()
    try:
        ended = {
            worker_id: (await store.get_run(f"run-{worker_id}")).status  # type: ignore[union-attr]
            for worker_id in rows
        }
        stopped = {
            worker.worker_id
            for worker in await store.list_workers(lease_seconds=10.0, include_stopped=True)
            if worker.stopped_at is not None
        }
    finally:
        await heartbeat.aclose()
    assert ended == {
        "dead-here": culm.RunStatus.ERROR,  # interrupted at once: no waiting out its lease
        "other-namespace": culm.RunStatus.PENDING,  # its pid means nothing here: lease only
        "other-boot": culm.RunStatus.PENDING,
        "other-host": culm.RunStatus.PENDING,
    }
    assert stopped == {"dead-here"}  # marked stopped: not looked at again


async def test_a_cancel_requested_elsewhere_ends_the_run_with_its_reason(tmp_path: Path) -> None:
    """Review finding 9: a cancel another process records in the store reaches the owner at its
    heartbeat with the request's reason (it was "cancelled by request")."""
    engine = culm.Engine(settings(tmp_path, heartbeat_seconds=0.05))
    async with engine:
        engine.scripts.register("slow", {"turns": [[{"text": "x"}, {"delay": 60}]]})
        run = await engine.run("go", model="scripted:slow")
        while (await engine.get_run(run.run_id)).status is not culm.RunStatus.RUNNING:
            await asyncio.sleep(0.01)
        # As another process's API would: through the store, not this process's runner.
        await engine.store.request_cancel(run.run_id, "stopped by the operator")
        events = await collect(engine.subscribe(run.run_id))

    assert events[-1].type == "cancelled"
    assert events[-1].reason == "stopped by the operator"
