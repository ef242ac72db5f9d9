"""Cancelling a run and waiting for its end, wherever it executes (the run manager's ``cancel``,
``wait`` and ``wait_tree``; a run that waits for a person is :mod:`culm.runtime.waiting`'s).

A run executing in this process is cancelled at once and waited for on its runner. Any other
is cancelled through the store (the truth: its owner's heartbeat reads the flag), then a
notice on the bus to its owner; it is waited for through its terminal event on the bus, with
reads of the store as a safety net, or, while no bus carries other processes' events, by
reading the store alone.
"""

from __future__ import annotations

import asyncio
import contextlib

from culm.bus.base import EventBus
from culm.domain.models import Run, RunStatus
from culm.errors import NotFoundError
from culm.runtime.registry import RunnerRegistry
from culm.storage.base import Store


class RunWaiter:
    def __init__(self, *, store: Store, registry: RunnerRegistry, bus: EventBus) -> None:
        self._store = store
        self._registry = registry
        self._bus = bus

    async def cancel(self, run_id: str, *, reason: str) -> Run:
        """Cancel a run: at once when it runs here. Otherwise the store's flag (the truth: its
        owner's heartbeat reads it) and then a notice on the bus to its owner, which cancels it
        at once; a run nobody claimed yet ends at once in the store."""
        runner = self._registry.get(run_id)
        if runner is not None:
            if runner.request_cancel(reason) or not runner.finalizing:
                return await self._require_run(run_id)
            await runner.done.wait()  # ending here; parked to wait for a person, maybe
            ended = await self._require_run(run_id)
            if ended.status is not RunStatus.WAITING:
                return ended
        run = await self._store.request_cancel(run_id, reason)
        if run is None:
            raise NotFoundError("run", run_id)
        if not run.status.is_terminal and run.owner is not None:
            await self._bus.send_cancel(run.owner, run_id, reason)
        return run

    async def wait(self, run_id: str) -> Run:
        """The run once it is terminal (wrap in ``asyncio.timeout`` to bound the wait).

        A run executing elsewhere is read in the store once the bus follows it (it may have
        ended before), then again when its terminal event passes on the bus, when the bus's
        state changes, and every ``_SAFETY_POLL`` s (``_STORE_POLL`` s while no bus carries
        other processes' events)."""
        while True:
            runner = self._registry.get(run_id)
            if runner is not None:
                await runner.done.wait()
                continue
            # Not while the bus is degraded: following the run would first wait on an
            # unreachable Redis; the store is read every _STORE_POLL s until it is back.
            follows = self._bus.crosses_processes and self._bus.state == "ok"
            with self._registry.watch(run_id) as launched:
                async with self._terminal_notice(run_id, follows) as ended:
                    ending = _ENDING_POLL  # after its terminal event: backs off to 2 s
                    while not launched.is_set():
                        run = await self._require_run(run_id)
                        if run.status.is_terminal:
                            return run
                        if not follows and self._bus.state == "ok" and self._bus.crosses_processes:
                            break  # the bus is back: follow the run on it
                        changes = [launched, self._bus.watch_state()]
                        backing_off = ended.is_set()  # this wait is one of the back-off's
                        if not backing_off:
                            changes.append(ended)
                        await _any_of(changes, timeout=_poll(ended, follows, ending))
                        if backing_off:
                            ending = min(ending * 2, _ENDING_POLL_MAX)

    def _terminal_notice(
        self, run_id: str, follows: bool
    ) -> contextlib.AbstractAsyncContextManager[asyncio.Event]:
        """The bus's notice of the run's end, when it follows the run."""
        if not follows:
            return contextlib.nullcontext(asyncio.Event())
        return self._bus.terminal_notice(run_id)

    async def wait_tree(self, run_id: str, *, reason: str) -> Run:
        """The run once it and every run below it are terminal; a descendant still active once
        its parent has ended (reserved while the parent was being cancelled) is cancelled."""
        run = await self.wait(run_id)
        for child in await self._store.list_runs(parent_run_id=run_id, limit=10_000):
            if not child.status.is_terminal:
                await self.cancel(child.run_id, reason=reason)
            await self.wait_tree(child.run_id, reason=reason)
        return run

    async def _require_run(self, run_id: str) -> Run:
        run = await self._store.get_run(run_id)
        if run is None:
            raise NotFoundError("run", run_id)
        return run


# How often a waiter reads the store for a run that executes in another process: when the bus
# carries its terminal event (a safety net only), and when nothing else tells it.
_SAFETY_POLL = 2.0
_STORE_POLL = 0.25
_ENDING_POLL = 0.02
_ENDING_POLL_MAX = 2.0


def _poll(ended: asyncio.Event, follows: bool, ending: float = _ENDING_POLL) -> float:
    """Seconds until the next read of the store for a run executing in another process;
    ``ending``: the current delay once its terminal event passed (doubled by the caller after
    each read: its status usually follows at once, but a finish_run being retried may take up
    to a lease, and the store must not be read 50 times a second meanwhile)."""
    if ended.is_set():
        return ending  # its terminal event is stored; its status follows soon
    return _SAFETY_POLL if follows else _STORE_POLL


async def _any_of(events: list[asyncio.Event], timeout: float) -> None:
    """Return once one of ``events`` is set, or after ``timeout`` seconds."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
