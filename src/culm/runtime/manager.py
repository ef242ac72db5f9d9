"""The run manager: reserves, starts, cancels, awaits, finishes and recovers runs.

Every run executes in a task owned by the manager's task group. Cancel means cancelling that
task; the manager turns the cancel it issued into a ``cancelled`` outcome. Whatever happens, the
terminal event is stored, then the terminal status, and only then is the runner released; and
it happens whenever the task ends, even one cancelled before its first step (a done-callback
finalizes any task that ended without doing so).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from culm.domain.events import (
    Cancelled,
    Complete,
    Error,
    ExecutionStarted,
    RunEventBase,
    RunRecovered,
)
from culm.domain.models import Message, MultitaskPolicy, Run, RunStatus, UserMessage
from culm.domain.time import utc_now
from culm.errors import (
    EngineClosedError,
    NotFoundError,
    RunFailure,
    StorageUnavailableError,
    UserError,
)
from culm.logs import get_logger
from culm.loop.context import LoopContext, LoopState
from culm.loop.driver import run_agent
from culm.runtime.batcher import EventBatcher
from culm.runtime.ownership import lease_expired, new_owner_id, owner_is_gone
from culm.runtime.registry import RunnerRegistry
from culm.runtime.runner import Runner
from culm.settings import RecoveryPolicy, Settings, ShutdownPolicy
from culm.storage.base import Orphan, Reservation, Store

log = get_logger(__name__)

# Builds the loop's context for a run: resolves its session, model and tools.
ContextFactory = Callable[
    [Run, Callable[[RunEventBase], object], Callable[[Sequence[Message]], Awaitable[None]]],
    Awaitable[LoopContext],
]

HEARTBEAT_INTERVAL = 1.0

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Outcome:
    status: RunStatus
    final_message: str = ""
    error: str | None = None
    code: str | None = None
    reason: str | None = None


class RunManager:
    def __init__(
        self,
        *,
        store: Store,
        registry: RunnerRegistry,
        batcher: EventBatcher,
        settings: Settings,
        context_factory: ContextFactory,
    ) -> None:
        self.owner = new_owner_id()
        self._store = store
        self._registry = registry
        self._batcher = batcher
        self._settings = settings
        self._context_factory = context_factory
        self._group: asyncio.TaskGroup | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._closing = False
        # Tasks that finish runs and that must outlive a cancel of whoever started them.
        self._finishing: set[asyncio.Task[Any]] = set()
        # Set when a stop stops waiting for a failing store.
        self._give_up = asyncio.Event()

    # Lifecycle

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        self._group = await stack.enter_async_context(asyncio.TaskGroup())
        stack.push_async_callback(self.aclose)
        await self.recover()
        self._heartbeat = self._group.create_task(self._beat(), name="culm-heartbeat")

    async def aclose(self) -> None:
        """Stop: wait ``shutdown_grace`` for active runs, then cancel them or hand them back."""
        if self._closing:
            return
        self._closing = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        runners = self._registry.runners()
        if runners and self._settings.shutdown_grace > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.shutdown_grace):
                    await asyncio.gather(*(runner.done.wait() for runner in runners))
        runners = self._registry.runners()
        recover = self._recovers
        for runner in runners:
            runner.request_cancel("shutdown" if not recover else _RELEASE)
        await self._until_done(runners)
        while self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)
        if recover:
            await self._store.release_runs(self.owner)

    async def _until_done(self, runners: list[Runner]) -> None:
        """Wait for ``runners`` to end. A run ending waits for the store to take its terminal
        event; if the store keeps failing past half the shutdown timeout, stop waiting for it
        (what it cannot take is dropped; the next start recovers those runs)."""
        done = asyncio.gather(*(runner.done.wait() for runner in runners))
        try:
            await asyncio.wait_for(asyncio.shield(done), self._settings.shutdown_timeout / 2)
        except TimeoutError:
            self._give_up.set()  # stop retrying finish_run
            if self._batcher.failing:
                log.error("the store keeps failing; stopping without it", runs=len(runners))
                self._batcher.give_up()
            await done

    def storage_unavailable(self, run_ids: set[str], exc: BaseException) -> None:
        """The store has failed to take these runs' events for longer than the retry window:
        end them in error (their terminal events are stored once the store takes them)."""
        for run_id in run_ids:
            runner = self._registry.get(run_id)
            if runner is not None and runner.request_cancel(_STORAGE):
                runner.storage_error = str(exc)
                log.error("ending a run: the store keeps failing", run_id=run_id)

    @property
    def _recovers(self) -> bool:
        return self._settings.shutdown_policy is ShutdownPolicy.RECOVER

    def _lease(self) -> datetime:
        return utc_now() + timedelta(seconds=self._settings.lease_seconds)

    # Starting runs

    async def start_run(self, run: Run, policy: MultitaskPolicy) -> Run:
        """Reserve ``run`` on its session by ``policy`` and start it (or queue it)."""
        if self._closing or self._group is None:
            raise EngineClosedError("the engine is not running")
        # Reserving and launching are one step that a cancel of the caller cannot split: a run
        # reserved but never launched would hold its session, pending, for good.
        reservation = await asyncio.shield(self._owned(self._reserve(run, policy)))
        if reservation.active_run_id is not None and policy is MultitaskPolicy.INTERRUPT:
            await self.cancel(reservation.active_run_id, reason="interrupted by a new run")
        return reservation.run

    async def _reserve(self, run: Run, policy: MultitaskPolicy) -> Reservation:
        reservation = await self._store.reserve_run(
            run,
            owner=self.owner,
            lease_expires_at=self._lease(),
            queue=policy is not MultitaskPolicy.REJECT,
            jump_queue=policy is MultitaskPolicy.INTERRUPT,
        )
        if reservation.active_run_id is None:
            self._launch(reservation.run)
        return reservation

    def _owned(self, work: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        """A task of the manager's own for ``work``, kept until it ends (``aclose`` awaits it)."""
        task = asyncio.get_running_loop().create_task(work)
        self._finishing.add(task)
        task.add_done_callback(_forget(self._finishing))
        return task

    def _launch(self, run: Run) -> Runner:
        assert self._group is not None
        runner = Runner(
            run,
            persist=self._batcher.add,
            fan_out_session=self._registry.fan_out_session,
            queue_size=self._settings.subscriber_queue_size,
        )
        self._registry.add(runner)
        runner.task = self._group.create_task(self._execute(runner), name=f"culm-run-{run.run_id}")
        runner.task.add_done_callback(lambda _: self._ended(runner))
        if self._closing:  # a reservation that ended after aclose took its list of runners
            runner.request_cancel(_RELEASE if self._recovers else "shutdown")
        return runner

    def _ended(self, runner: Runner) -> None:
        """The run's task is done. If it never finalized (cancelled from outside before its
        first step), do it now: the run must not hold its session, pending, for good."""
        if not runner.finalizing:
            self._finish(runner, LoopState(messages=[]), _requested(runner))

    def _finish(
        self, runner: Runner, state: LoopState, outcome: Outcome | None
    ) -> asyncio.Task[None]:
        """Finalize the run in a task of its own (a cancel of the run's task cannot stop it)."""
        runner.finalizing = True
        runner.finalizing_since = time.monotonic()
        return self._owned(self._finalize(runner, state, outcome))

    async def _start_next(self, session_id: str) -> None:
        if self._closing:
            return
        run = await self._store.promote_next(
            session_id, owner=self.owner, lease_expires_at=self._lease()
        )
        if run is not None:
            self._launch(run)

    # Executing

    async def _execute(self, runner: Runner) -> None:
        runner.started = True
        state = LoopState(messages=[])
        try:
            if runner.cancel_reason is not None:  # cancelled before this first step
                outcome: Outcome | None = _requested(runner)
            else:
                outcome = await self._run(runner, state)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            reason = runner.cancel_reason
            if reason is None or task is None or task.uncancel() > 0:
                # A cancel we did not issue: record it, then let it propagate.
                await asyncio.shield(self._finish(runner, state, _cancelled("cancelled")))
                raise
            outcome = _requested(runner)
        except (RunFailure, StorageUnavailableError) as exc:
            outcome = Outcome(RunStatus.ERROR, error=str(exc), code=exc.code)
        except UserError as exc:
            outcome = Outcome(RunStatus.ERROR, error=str(exc), code="invalid_request")
        except Exception as exc:
            log.exception("run failed with an internal error", run_id=runner.run_id)
            message = f"internal error: {type(exc).__name__}: {exc}"
            outcome = Outcome(RunStatus.ERROR, error=message, code="internal_error")
        await asyncio.shield(self._finish(runner, state, outcome))

    async def _run(self, runner: Runner, state: LoopState) -> Outcome | None:
        started_at = utc_now()
        run = await self._store.claim_run(
            runner.run_id,
            owner=self.owner,
            lease_expires_at=self._lease(),
            started_at=started_at,
            message=UserMessage(content=runner.run.input) if runner.run.input else None,
        )
        if run is None:
            return None  # cancelled before it started; the store has ended it
        runner.status = RunStatus.RUNNING
        runner.started_at = started_at
        runner.emit(ExecutionStarted(started_at=started_at, attempt=run.attempt))

        async def append(messages: Sequence[Message]) -> None:
            await self._store.append_messages(run.session_id, messages, run_id=run.run_id)

        ctx = await self._context_factory(run, runner.emit, append)
        state.messages = await self._store.get_messages(run.session_id)
        final = await run_agent(ctx, state)
        return Outcome(RunStatus.COMPLETED, final_message=final)

    async def _finalize(self, runner: Runner, state: LoopState, outcome: Outcome | None) -> None:
        # Whether to promote the session's next queued run: unknown (so look) unless
        # finish_run says; nothing when the run is handed back.
        start_next = outcome is None or outcome.reason != _RELEASE
        try:
            if outcome is not None and outcome.reason == _RELEASE:
                await self._batcher.flush()  # handed back for recovery: no terminal event
            elif outcome is not None:
                runner.emit(_terminal_event(outcome, state))
                await self._batcher.flush()
                start_next = await self._finish_run(runner.run_id, outcome, state)
                runner.status = outcome.status
        except Exception:
            # Its lease is no longer renewed: recovery ends it (from its stored terminal event).
            log.exception("finishing a run failed; recovery will end it", run_id=runner.run_id)
        finally:
            runner.completed_at = utc_now()
            runner.usage = state.usage
            self._registry.remove(runner)
            runner.done.set()
        if start_next:
            await self._start_next(runner.session_id)

    async def _finish_run(self, run_id: str, outcome: Outcome, state: LoopState) -> bool:
        """Store the run's terminal status; while the store fails, retry for up to the storage
        retry window (or until a stop gives up on the store), then raise."""
        deadline = time.monotonic() + self._settings.storage_retry_window
        delay = 0.05
        while True:
            try:
                return await self._store.finish_run(
                    run_id,
                    status=outcome.status,
                    error=outcome.error,
                    usage=state.usage,
                    completed_at=utc_now(),
                )
            except StorageUnavailableError as exc:
                if time.monotonic() >= deadline or self._give_up.is_set():
                    raise
                log.error("storing a run's end failed; retrying", run_id=run_id, error=str(exc))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._give_up.wait()
            delay = min(delay * 2, 1.0)

    # Cancel and wait

    async def cancel(self, run_id: str, *, reason: str) -> Run:
        runner = self._registry.get(run_id)
        if runner is not None:
            runner.request_cancel(reason)
            return await self._require_run(run_id)
        run = await self._store.request_cancel(run_id, reason)
        if run is None:
            raise NotFoundError("run", run_id)
        if run.status is RunStatus.CANCELLED:
            await self._start_next(run.session_id)
        return run

    async def wait(self, run_id: str) -> Run:
        """The run once it is terminal (wrap in ``asyncio.timeout`` to bound the wait)."""
        while True:
            runner = self._registry.get(run_id)
            if runner is not None:
                await runner.done.wait()
                continue
            with self._registry.watch(run_id) as changed:
                run = await self._require_run(run_id)
                if run.status.is_terminal:
                    return run
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.25):
                        await changed.wait()

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

    # Leases, cross-process cancel, recovery

    async def _beat(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            ticks += 1
            try:
                await self._renew()
                if ticks * HEARTBEAT_INTERVAL >= self._settings.lease_seconds:
                    ticks = 0
                    await self.recover()
            except Exception:
                log.exception("heartbeat failed")

    async def _renew(self) -> None:
        """Renew the leases of the runs this process still runs: not of a run without a
        runner, nor of one whose finalizing outlasted the storage retry window (it is stuck on
        a store that does not take its end; an expired lease lets recovery end it)."""
        stuck_since = time.monotonic() - self._settings.storage_retry_window
        run_ids = [
            runner.run_id
            for runner in self._registry.runners()
            if runner.finalizing_since is None or runner.finalizing_since > stuck_since
        ]
        for run_id in await self._store.renew_leases(self.owner, run_ids, self._lease()):
            runner = self._registry.get(run_id)
            if runner is not None:
                runner.request_cancel("cancelled by request")

    async def recover(self) -> list[Run]:
        """End or re-queue runs whose owner is gone, and this process's own runs that it no
        longer runs (no runner, lease run out: finishing failed); start stranded queues."""
        recovered: list[Run] = []
        orphans = [
            orphan
            for orphan in await self._store.list_orphan_candidates(exclude_owner=self.owner)
            if owner_is_gone(orphan.owner, orphan.lease_expires_at)
        ]
        orphans += [
            orphan
            for orphan in await self._store.list_owned_runs(self.owner)
            if self._registry.get(orphan.run.run_id) is None
            and lease_expired(orphan.lease_expires_at)
        ]
        for orphan in orphans:
            run = await self._recover_one(orphan)
            if run is not None:
                recovered.append(run)
        for session_id in await self._store.list_stranded_sessions():
            await self._start_next(session_id)
        return recovered

    async def _recover_one(self, orphan: Orphan) -> Run | None:
        previous = orphan.run.attempt
        requeue = (
            self._settings.recovery_policy is RecoveryPolicy.REQUEUE
            and previous < self._settings.max_attempts
        )
        events: list[RunEventBase] = [
            RunRecovered(previous_attempt=previous, action="requeued" if requeue else "errored")
        ]
        if not requeue:
            events.append(Error(message="interrupted", code="interrupted"))
        run = await self._store.recover_run(
            orphan,
            owner=self.owner,
            lease_expires_at=self._lease(),
            requeue=requeue,
            now=utc_now(),
            events=events,
        )
        if run is None:
            return None
        # Ended as error, re-queued, or (its terminal event was stored) ended as that says.
        log.warning("recovered an interrupted run", run_id=run.run_id, status=run.status.value)
        if run.status is RunStatus.PENDING:
            self._launch(run)
        else:
            await self._start_next(run.session_id)
        return run


_RELEASE = "\x00release"


def _forget(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # its awaiter (if it still has one) got it; nobody else must

    return done


_STORAGE = "\x00storage"


def _requested(runner: Runner) -> Outcome:
    """The outcome of the cancel the engine requested of ``runner`` (its ``cancel_reason``)."""
    reason = runner.cancel_reason or "cancelled"
    if reason == _STORAGE:
        message = f"the store kept failing: {runner.storage_error or 'unavailable'}"
        return Outcome(RunStatus.ERROR, error=message, code=StorageUnavailableError.code)
    return _cancelled(reason)


def _cancelled(reason: str) -> Outcome:
    return Outcome(RunStatus.CANCELLED, reason=reason)


def _terminal_event(outcome: Outcome, state: LoopState) -> RunEventBase:
    if outcome.status is RunStatus.COMPLETED:
        return Complete(usage=state.usage, final_message=outcome.final_message)
    if outcome.status is RunStatus.CANCELLED:
        return Cancelled(reason=outcome.reason or "cancelled")
    return Error(message=outcome.error or "error", code=outcome.code or "error")
