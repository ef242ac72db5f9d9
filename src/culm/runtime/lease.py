"""Leases: a process's heartbeat, and the sweeper that takes over runs whose lease ran out.

Every ``heartbeat_seconds`` the :class:`Heartbeat`
- renews, in database time, the leases of the runs this process executes, each conditional on
  the run's ``(owner, epoch)``: those the store reports ``lost`` (taken over while this process
  was stalled, or its store writes failed) are cancelled here at once with a "lease lost" outcome
  that writes nothing; those with a pending cancel request are cancelled. It renews nothing
  while the event writer has failed for longer than half a lease (a process that cannot store a
  run's events must not keep the run: its runs are taken over), nor a run stuck finalizing past
  the storage retry window;
- sweeps: takes over runs whose lease expired (any process's; ``FOR UPDATE SKIP LOCKED`` makes
  one sweeper win each run), re-queuing or ending them by ``CULM_RECOVERY_POLICY``, and answers
  the expired requests of waiting runs (``input_timeout``), publishing the events it wrote;
- writes this process's ``workers`` row (liveness, counters).

The cancel requests it finds are the fallback: a cancel from another process reaches this one
at once as a notice on the event bus (``bus.on_cancel``), handled the same way.

Embedded fast restart: at start, on SQLite only, runs of a previous process whose ``workers`` row
names this host, this boot and this PID namespace and whose pid is gone are taken over at once
instead of after their lease. On PostgreSQL (distributed) a dead owner is found by its lease only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from culm.bus.base import EventBus
from culm.domain.events import RunEvent
from culm.logs import get_logger
from culm.runtime.dispatch import WorkerCounters
from culm.runtime.ownership import boot_id, pid_alive, pid_namespace, same_machine
from culm.settings import RecoveryPolicy, Settings
from culm.storage.base import Store, SweepPolicy

log = get_logger(__name__)
_CLAIMING_KINDS = ("worker", "embedded")


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """What the heartbeat needs from the run manager."""

    fences: Callable[[], Mapping[str, int]]  # run_id -> epoch of the runs whose leases to renew
    cancel_requested: Callable[[Mapping[str, str]], None]  # run_id -> the request's reason
    lost: Callable[[list[tuple[str, int]]], None]  # (run_id, epoch) no longer this process's
    active_runs: Callable[[], int]
    store_failing_for: Callable[[], float]  # seconds the event writer has been failing (or 0)
    # (run_id, epoch) renewed, and the time.monotonic() their leases surely last until
    renewed: Callable[[Mapping[str, int], float], None] = lambda fences, until: None
    # Events the store wrote for waiting runs (input timeouts): to the bus and the followers.
    stored_events: Callable[[Sequence[RunEvent]], None] = lambda events: None


class Heartbeat:
    def __init__(
        self,
        store: Store,
        *,
        owner: str,
        kind: str,
        settings: Settings,
        holder: LeaseHolder,
        counters: WorkerCounters,
        sweeps: bool = True,
        fast_restart: bool = False,
        bus: EventBus | None = None,
    ) -> None:
        self._store = store
        self._owner = owner
        self._kind = kind
        self._settings = settings
        self._holder = holder
        self._counters = counters
        self._sweeps = sweeps
        self._fast_restart = fast_restart
        self._bus = bus
        self._task: asyncio.Task[None] | None = None
        # The live processes that claim runs (this one included), sorted, as of the last
        # heartbeat: the dispatcher's "whose turn is it" for a wake-up (``dispatch.py``).
        self.claimers: tuple[str, ...] = ()

    @property
    def policy(self) -> SweepPolicy:
        settings = self._settings
        return SweepPolicy(
            requeue=settings.recovery_policy is RecoveryPolicy.REQUEUE,
            max_attempts=settings.max_attempts,
            lease_seconds=settings.lease_seconds,
        )

    async def start(self) -> None:
        """Register this process's ``workers`` row, take over what a dead predecessor on this
        machine left (SQLite only) or whose lease ran out, then beat in the background. Cancel
        notices for this process's runs arriving on the bus go where the heartbeat's go."""
        if self._bus is not None:
            requested = self._holder.cancel_requested
            self._bus.on_cancel(self._owner, lambda run_id, reason: requested({run_id: reason}))
        await self._store.register_worker(
            worker_id=self._owner,
            host=socket.gethostname(),
            pid=os.getpid(),
            boot_id=boot_id(),
            pid_namespace=pid_namespace(),
            kind=self._kind,
            concurrency=self._settings.worker_concurrency,
        )
        if self._sweeps:
            dead = await self._dead_owners() if self._fast_restart else []
            await self.sweep(dead)
            for worker_id in dead:  # its runs are taken over: it is not looked at again
                await self._store.stop_worker(worker_id)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="culm-heartbeat")

    async def aclose(self) -> None:
        """Stop beating and mark the ``workers`` row stopped (after the runs are done)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self._write_row()
        try:
            await self._store.stop_worker(self._owner)
        except Exception:
            log.exception("marking this worker stopped failed")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.heartbeat_seconds)
            await self.beat()

    async def beat(self) -> None:
        """One heartbeat: renew, sweep, write the row (each step on its own if another fails)."""
        for step in (self.renew, self.sweep, self._write_row):
            try:
                await step()
            except Exception as exc:
                log.error("heartbeat step failed", step=step.__name__, error=str(exc))

    async def renew(self) -> None:
        failing = self._holder.store_failing_for()
        if failing > self._settings.lease_seconds / 2:
            log.warning("not renewing leases: storing run events keeps failing", seconds=failing)
            return
        fences = self._holder.fences()
        if not fences:
            return
        # Measured before the write: the store's lease, counted from its own later "now",
        # lasts at least this long.
        until = time.monotonic() + self._settings.lease_seconds
        renewal = await self._store.renew_leases(self._owner, fences, self._settings.lease_seconds)
        kept = {run_id: epoch for run_id, epoch in fences.items() if run_id not in renewal.lost}
        self._holder.renewed(kept, until)
        if renewal.lost:
            log.warning("lease lost: cancelling runs here, writing nothing", runs=renewal.lost)
            self._holder.lost([(run_id, fences[run_id]) for run_id in renewal.lost])
        if renewal.cancel_requested:
            self._holder.cancel_requested(dict(renewal.cancel_requested))

    async def sweep(self, dead_owners: list[str] | None = None) -> None:
        if not self._sweeps:
            return
        taken = await self._store.sweep(self._owner, self.policy, dead_owners=dead_owners or ())
        self._counters.takeovers += len(taken)
        for run in taken:
            log.warning("took over a run whose owner is gone", run_id=run.run_id, status=run.status)
        expired = await self._store.expire_input()  # input timeouts: database time, no timer
        if expired:
            self._holder.stored_events(expired)

    async def _write_row(self) -> None:
        counters = self._counters
        await self._store.worker_heartbeat(
            self._owner,
            active_runs=self._holder.active_runs(),
            claims=counters.claims,
            takeovers=counters.takeovers,
            fenced_writes=counters.fenced_writes,
        )
        workers = await self._store.list_workers(lease_seconds=self._settings.lease_seconds)
        self.claimers = tuple(
            sorted(w.worker_id for w in workers if w.alive and w.kind in _CLAIMING_KINDS)
        )

    async def _dead_owners(self) -> list[str]:
        """Owners registered on this machine (host, boot, PID namespace) whose pid is gone."""
        workers = await self._store.list_workers(lease_seconds=self._settings.lease_seconds)
        return [
            worker.worker_id
            for worker in workers
            if worker.worker_id != self._owner
            and worker.stopped_at is None
            and same_machine(worker.host, worker.boot_id, worker.pid_namespace)
            and not pid_alive(worker.pid)
        ]
