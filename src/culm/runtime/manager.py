"""The run manager: reserves, launches, cancels, awaits and finishes runs.

A run is reserved in the store ready and unowned (the store wakes the workers); a worker's
dispatcher claims it and :meth:`RunManager.launch` executes it here. Sub-agents, and ``culm
run``'s own run, are reserved already owned by this process and launched at once (they never
enter the queue). Every write for a run (start, messages, events, finish) is fenced on the claim
it runs under, ``(owner, epoch)``: once another process has taken the run over, nothing this one
writes lands, and the run is cancelled here with a "lease lost" outcome that writes nothing.

Every run executes in a task owned by the manager's task group. Cancel means cancelling that
task; the manager turns the cancel it issued into a ``cancelled`` outcome. Whatever happens, the
terminal event is stored, then the terminal status, and only then is the runner released; and
it happens whenever the task ends, even one cancelled before its first step (a done-callback
finalizes any task that ended without doing so).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from culm.bus.base import EventBus
from culm.bus.local import LocalBus
from culm.domain.events import Cancelled, Complete, Error, ExecutionStarted, RunEventBase
from culm.domain.models import Message, MultitaskPolicy, Run, RunStatus, Session, UserMessage
from culm.domain.time import utc_now
from culm.errors import (
    EngineClosedError,
    LeaseLostError,
    NotFoundError,
    RunFailure,
    StorageUnavailableError,
    UserError,
)
from culm.logs import get_logger
from culm.loop.approval import WaitForInput
from culm.loop.context import FinalAnswer, LoopContext, LoopState
from culm.loop.driver import run_agent
from culm.runtime import waiting
from culm.runtime.batcher import Attempt, EventBatcher
from culm.runtime.dispatch import Dispatcher, WorkerCounters
from culm.runtime.lease import LeaseHolder
from culm.runtime.ownership import new_owner_id
from culm.runtime.registry import RunnerRegistry
from culm.runtime.runner import Runner
from culm.runtime.waiter import RunWaiter
from culm.settings import Settings, ShutdownPolicy
from culm.storage.base import Ending, Reservation, SessionState, Store

log = get_logger(__name__)

# Builds the loop's context for a run: resolves its session, model and tools.
ContextFactory = Callable[
    [
        Run,
        SessionState,
        Callable[[RunEventBase], object],
        Callable[[Sequence[Message]], Awaitable[None]],
    ],
    Awaitable[LoopContext],
]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Outcome:
    status: RunStatus
    final_message: str = ""
    error: str | None = None
    code: str | None = None
    reason: str | None = None
    wait: WaitForInput | None = None  # status waiting: what the run waits for
    messages: tuple[Message, ...] = ()  # its last messages, stored with its end
    input_timeout: float | None = None


class RunManager:
    def __init__(
        self,
        *,
        store: Store,
        registry: RunnerRegistry,
        batcher: EventBatcher,
        settings: Settings,
        context_factory: ContextFactory,
        runs_own_runs: bool = False,
        bus: EventBus | None = None,
    ) -> None:
        self.owner = new_owner_id()
        self.counters = WorkerCounters()
        # Set by the engine when this process claims ready runs (roles EMBEDDED and WORKER).
        self.dispatcher: Dispatcher | None = None
        self._store = store
        self._registry = registry
        self._batcher = batcher
        self._settings = settings
        self._context_factory = context_factory
        # Carries cancels to the process that executes a run, and terminal notices to waiters.
        self.bus: EventBus = bus or LocalBus()
        self._waiter = RunWaiter(store=store, registry=registry, bus=self.bus)
        # CLI: the runs this process starts are reserved owned by it and executed here.
        self._runs_own_runs = runs_own_runs
        self._group: asyncio.TaskGroup | None = None
        self._closing = False
        # Tasks that finish runs and that must outlive a cancel of whoever started them.
        self._finishing: set[asyncio.Task[Any]] = set()
        # Cancel notices for runs not (yet) executing here: run id -> (reason, monotonic expiry).
        self._early_cancels: dict[str, tuple[str, float]] = {}
        # Set when a stop stops waiting for a failing store.
        self._give_up = asyncio.Event()

    # Lifecycle

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        self._group = await stack.enter_async_context(asyncio.TaskGroup())
        stack.push_async_callback(self.aclose)

    @property
    def closing(self) -> bool:
        return self._closing

    async def aclose(self) -> None:
        """Stop: stop claiming, wait ``shutdown_grace`` for active runs, then cancel them or
        hand them back (``release_runs``: ready again for any worker) by ``shutdown_policy``."""
        if self._closing:
            return
        self._closing = True
        if self.dispatcher is not None:
            await self.dispatcher.aclose()
        runners = self._registry.runners()
        if runners and self._settings.shutdown_grace > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.shutdown_grace):
                    await asyncio.gather(*(runner.done.wait() for runner in runners))
        runners = self._registry.runners()
        for runner in runners:
            runner.request_cancel(self._stop_reason)
        await self._until_done(runners)
        while self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)

    @property
    def _stop_reason(self) -> str:
        return _RELEASE if self._settings.shutdown_policy is ShutdownPolicy.RECOVER else "shutdown"

    async def _until_done(self, runners: list[Runner]) -> None:
        """Wait for ``runners`` to end. A run ending waits for the store to take its terminal
        event; if the store keeps failing past half the shutdown timeout, stop waiting for it
        (what it cannot take is dropped; its lease runs out and a sweeper ends the run)."""
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

    def rejected(self, attempts: set[Attempt]) -> None:
        """The store refused these attempts' events (fence or constraint): cancel them here,
        writing nothing more (their lease runs out, or has been taken over already)."""
        self.counters.fenced_writes += len(attempts)
        self.lease_lost(attempts)

    def lease_lost(self, attempts: Iterable[Attempt]) -> None:
        """Cancel these attempts (run_id, epoch) here: only the runner of that very attempt,
        never a later attempt of the run this process claimed since."""
        for run_id, epoch in attempts:
            runner = self._registry.get(run_id)
            if runner is None or (epoch is not None and runner.epoch != epoch):
                continue
            if runner.request_cancel(_LEASE_LOST):
                log.warning("lease lost: cancelling the run here", run_id=run_id)

    def lease_holder(self) -> LeaseHolder:
        """What the heartbeat renews and whom it tells what it learnt."""
        return LeaseHolder(
            fences=self._fences,
            cancel_requested=self._cancel_requested,
            lost=self.lease_lost,
            active_runs=lambda: len(self._registry),
            store_failing_for=self._batcher.failing_for,
            renewed=self._renewed,
            stored_events=functools.partial(
                waiting.announce, self._registry, local_bus=not self.bus.crosses_processes
            ),
        )

    def _renewed(self, fences: Mapping[str, int], until: float) -> None:
        for run_id, epoch in fences.items():
            runner = self._registry.get(run_id)
            if runner is not None and runner.epoch == epoch:
                runner.lease_until = max(runner.lease_until, until)

    def _may_show_early(self, runner: Runner) -> bool:
        """Whether ``runner`` may show events before they are stored: only while its lease
        surely holds (a stalled worker's was maybe taken over) and the store takes writes (a
        worker that cannot write stops renewing its leases on purpose)."""
        margin = self._settings.lease_seconds / 4
        return not self._batcher.failing and time.monotonic() < runner.lease_until - margin

    def _fences(self) -> Mapping[str, int]:
        """The runs whose leases to renew: not one whose finalizing outlasted the storage retry
        window (it is stuck on a store that does not take its end; a sweeper ends it)."""
        stuck_since = time.monotonic() - self._settings.storage_retry_window
        return {
            runner.run_id: runner.epoch
            for runner in self._registry.runners()
            if runner.finalizing_since is None or runner.finalizing_since > stuck_since
        }

    def _cancel_requested(self, reasons: Mapping[str, str]) -> None:
        """Cancel requests made through the store (another process): each with its reason.

        A notice for a run not registered here may be for one this process has just claimed
        (the claim committed, so the canceller sent it here, but ``claim_runs`` has not
        returned yet): kept for one lease and applied by :meth:`launch`, else the cancel would
        wait for the next heartbeat while the run executes."""
        now = time.monotonic()
        self._early_cancels = {
            run_id: kept for run_id, kept in self._early_cancels.items() if kept[1] > now
        }
        for run_id, reason in reasons.items():
            runner = self._registry.get(run_id)
            if runner is not None:
                runner.request_cancel(reason)
            else:
                self._early_cancels[run_id] = (reason, now + self._settings.lease_seconds)

    # Starting runs

    async def start_run(
        self, run: Run, policy: MultitaskPolicy, *, session: Session | None = None
    ) -> Run:
        """Reserve ``run`` on its session by ``policy`` (or queue it). A sub-agent (and, for
        role CLI, every run) is reserved owned by this process and launched here; any other is
        reserved ready, for a worker to claim. ``session``: a new session, stored with the run
        (one write)."""
        if self._closing or self._group is None:
            raise EngineClosedError("the engine is not running")
        # Reserving and launching are one step that a cancel of the caller cannot split: a run
        # reserved owned but never launched would hold its session until its lease ran out.
        reservation = await asyncio.shield(self._owned(self._reserve(run, policy, session)))
        if reservation.active_run_id is not None and policy is MultitaskPolicy.INTERRUPT:
            await self.cancel(reservation.active_run_id, reason="interrupted by a new run")
        return reservation.run

    async def _reserve(
        self, run: Run, policy: MultitaskPolicy, session: Session | None
    ) -> Reservation:
        queue = policy is not MultitaskPolicy.REJECT
        jump_queue = policy is MultitaskPolicy.INTERRUPT
        if run.parent_run_id is None and not self._runs_own_runs:
            reservation = await self._store.reserve_run(
                run, queue=queue, jump_queue=jump_queue, session=session
            )
            if reservation.active_run_id is None and self.dispatcher is not None:
                await self.dispatcher.claim_now()  # a worker here: launch it before returning
            return reservation
        parent_fence = None
        if run.parent_run_id is not None:
            # A sub-agent only while its parent is still ours (not taken over meanwhile).
            parent = self._registry.get(run.parent_run_id)
            if parent is None:
                raise LeaseLostError(run.parent_run_id)
            parent_fence = (self.owner, parent.epoch)
        reservation = await self._store.reserve_run(
            run,
            queue=queue,
            jump_queue=jump_queue,
            owner=self.owner,
            lease_seconds=self._settings.lease_seconds,
            parent_fence=parent_fence,
            session=session,
        )
        if reservation.active_run_id is None:
            self.launch(reservation.run)
        return reservation

    def _owned(self, work: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        """A task of the manager's own for ``work``, kept until it ends (``aclose`` awaits it)."""
        task = asyncio.get_running_loop().create_task(work)
        self._finishing.add(task)
        task.add_done_callback(_forget(self._finishing))
        return task

    def launch(self, run: Run) -> Runner:
        """Execute ``run``, claimed by this process under ``run.epoch``."""
        assert self._group is not None
        runner = Runner(
            run,
            persist=functools.partial(self._batcher.add, fence=(self.owner, run.epoch)),
            fan_out_session=self._registry.fan_out_session,
            queue_size=self._settings.subscriber_queue_size,
        )
        # Claimed (or renewed) just before: the lease lasts from about now.
        runner.lease_until = time.monotonic() + self._settings.lease_seconds
        runner.may_show_early = functools.partial(self._may_show_early, runner)
        self._registry.add(runner)
        work = self._execute(runner)
        try:
            runner.task = self._group.create_task(work, name=f"culm-run-{run.run_id}")
        except BaseException:
            work.close()  # never to run (a finished TaskGroup leaves it unawaited on 3.11)
            self._registry.remove(runner)  # not executing here: neither held nor counted
            raise
        runner.task.add_done_callback(lambda _: self._ended(runner))
        if self._closing:  # claimed while aclose was taking its list of runners
            runner.request_cancel(self._stop_reason)
        early = self._early_cancels.pop(run.run_id, None)
        if early is not None and early[1] > time.monotonic():
            runner.request_cancel(early[0])  # its notice arrived while it was being claimed
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
            outcome = None if runner.ended_in_store else _requested(runner)
        except LeaseLostError:
            outcome = _cancelled(_LEASE_LOST)
        except (RunFailure, StorageUnavailableError) as exc:
            outcome = Outcome(RunStatus.ERROR, error=str(exc), code=exc.code)
        except UserError as exc:
            outcome = Outcome(RunStatus.ERROR, error=str(exc), code="invalid_request")
        except Exception as exc:
            log.exception("run failed with an internal error", run_id=runner.run_id)
            message = f"internal error: {type(exc).__name__}: {exc}"
            outcome = Outcome(RunStatus.ERROR, error=message, code="internal_error")
        await asyncio.shield(self._finish(runner, state, outcome))

    async def _start(self, runner: Runner) -> Run | None:
        """Mark the run running in the store. A cancel arriving meanwhile waits for the store's
        answer first: if the store ended the run (a cancel request it saw), nothing more is
        written for it here. A claimed run was started by its claim: nothing to write."""
        if runner.run.status is RunStatus.RUNNING:
            return runner.run
        message = UserMessage(content=runner.run.input) if runner.run.input else None
        start = asyncio.ensure_future(
            self._store.start_run(runner.run_id, runner.epoch, owner=self.owner, message=message)
        )
        try:
            return await asyncio.shield(start)
        except asyncio.CancelledError:
            try:
                runner.ended_in_store = await start is None
            except LeaseLostError:
                runner.cancel_reason = _LEASE_LOST
            except Exception:
                pass  # not started: the engine's cancel ends it as usual
            raise

    async def _run(self, runner: Runner, state: LoopState) -> Outcome | None:
        fence = (self.owner, runner.epoch)
        run = await self._start(runner)
        if run is None:
            return None  # cancelled before it started; the store has ended it
        started_at = run.started_at or utc_now()
        runner.status = RunStatus.RUNNING
        runner.started_at = started_at
        answered = await waiting.answered(self._store, run)
        recovered = bool(answered) and not waiting.same_attempt(run, answered)
        if answered:  # resumed after waiting: its usage and rounds go on
            state.usage, state.round = run.usage, run.round_count
        if not answered or recovered:  # a new attempt (recovered while resuming: see run_agent)
            runner.emit(ExecutionStarted(started_at=started_at, attempt=run.attempt))

        async def append(messages: Sequence[Message]) -> None:
            await self._store.append_messages(
                run.session_id, messages, run_id=run.run_id, fence=fence
            )

        # The session, its messages and latest compaction in one read (each read apart costs
        # about as much again: most of a run's start-up when many start at once).
        loaded = await self._store.get_session_state(run.session_id)
        if loaded is None:
            raise NotFoundError("session", run.session_id)
        ctx = await self._context_factory(run, loaded, runner.emit, append)
        if answered:  # what it and its sub-agents spent before it waited counts toward its budget
            state.spend = await waiting.spent_before(self._store, run)
        state.messages = loaded.messages
        match await run_agent(ctx, state, answered, recovered=recovered):
            case FinalAnswer(text=text, messages=messages):
                return Outcome(RunStatus.COMPLETED, final_message=text, messages=messages)
            case WaitForInput() as wait:
                timeout = ctx.session.input_timeout
                return Outcome(RunStatus.WAITING, wait=wait, input_timeout=timeout)

    async def _finalize(self, runner: Runner, state: LoopState, outcome: Outcome | None) -> None:
        try:
            if outcome is None:
                pass  # cancelled before it started: the store has ended it
            elif outcome.reason == _LEASE_LOST:
                log.warning("lease lost: the run ends here, writing nothing", run_id=runner.run_id)
            elif outcome.reason == _RELEASE:
                await self._release(runner)
            elif outcome.wait is not None:
                await waiting.park(
                    self._store,
                    self._batcher,
                    self._registry,
                    runner,
                    (self.owner, runner.epoch),
                    outcome.wait,
                    usage=state.usage,
                    timeout=outcome.input_timeout,
                )
            else:
                await self._end(runner, outcome, state)
        except LeaseLostError:
            log.warning("lease lost while finishing a run; writing nothing", run_id=runner.run_id)
        except Exception:
            # Its lease is no longer renewed: a sweeper ends it (from its stored terminal event).
            log.exception("finishing a run failed; a sweeper will end it", run_id=runner.run_id)
        finally:
            runner.completed_at = utc_now()
            runner.usage = state.usage
            self._registry.remove(runner)
            if outcome is not None and outcome.wait is not None:
                runner.close_subscriptions()  # its followers go on from the store
            self._batcher.forget([(runner.run_id, runner.epoch)])
            runner.done.set()
            if self.dispatcher is not None:
                self.dispatcher.freed()

    async def _end(self, runner: Runner, outcome: Outcome, state: LoopState) -> None:
        """Store the run's terminal event, last messages and status in one write (the
        batcher's: see there), or, should its events have been dropped at a stop, apart."""
        runner.emit(_terminal_event(outcome, state))
        ending = Ending(
            runner.session_id, outcome.status, outcome.error, state.usage, outcome.messages
        )
        self._batcher.end_with(runner.run_id, runner.epoch, ending)
        await self._batcher.flush()
        if self._batcher.isolated(runner.run_id, runner.epoch):
            log.warning("the store refused the run's end; writing nothing", run_id=runner.run_id)
            return
        if not self._batcher.ended(runner.run_id, runner.epoch):
            if outcome.messages:
                await self._store.append_messages(
                    runner.session_id,
                    outcome.messages,
                    run_id=runner.run_id,
                    fence=(self.owner, runner.epoch),
                )
            await self._finish_run(runner, outcome, state)
        runner.status = outcome.status
        runner.end_stored = True

    async def _release(self, runner: Runner) -> None:
        """Hand the run back (a stop, policy "recover"): ready again for any worker, with no
        terminal event. At once, while its lease is still renewed here: handed back only once
        every run is done, it could expire first and be ended by a sweeper's policy instead."""
        await self._batcher.flush()
        if self._batcher.isolated(runner.run_id, runner.epoch):
            return  # its writes were refused: it is not ours to hand back
        if self._batcher.failing:
            # Events clients saw may be lost: let the lease run out, so that recovery appends
            # after the seqs reserved for them (a hand-back goes on from the last stored one).
            return
        try:
            # Clean: everything it showed is stored (checked just above).
            await self._store.release_runs(self.owner, {runner.run_id: runner.epoch}, clean=True)
        except Exception:
            log.exception("handing back a run failed; its lease runs out", run_id=runner.run_id)

    async def _finish_run(self, runner: Runner, outcome: Outcome, state: LoopState) -> None:
        """Store the run's terminal status (the store then makes the session's next queued run
        ready); while the store fails, retry for up to the storage retry window (or until a
        stop gives up on the store), then raise."""
        deadline = time.monotonic() + self._settings.storage_retry_window
        delay = 0.05
        while True:
            try:
                await self._store.finish_run(
                    runner.run_id,
                    fence=(self.owner, runner.epoch),
                    status=outcome.status,
                    error=outcome.error,
                    usage=state.usage,
                )
                return
            except StorageUnavailableError as exc:
                if time.monotonic() >= deadline or self._give_up.is_set():
                    raise
                log.error(
                    "storing a run's end failed; retrying", run_id=runner.run_id, error=str(exc)
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._give_up.wait()
            delay = min(delay * 2, 1.0)

    # Cancel and wait (see :mod:`culm.runtime.waiter`)

    async def cancel(self, run_id: str, *, reason: str) -> Run:
        """Cancel a run, wherever it executes."""
        return await self._waiter.cancel(run_id, reason=reason)

    async def wait(self, run_id: str) -> Run:
        """The run once it is terminal (wrap in ``asyncio.timeout`` to bound the wait)."""
        return await self._waiter.wait(run_id)

    async def wait_tree(self, run_id: str, *, reason: str) -> Run:
        """The run once it and every run below it are terminal (an active descendant of an
        ended run is cancelled)."""
        return await self._waiter.wait_tree(run_id, reason=reason)


# Cancel reasons the engine gives itself (never shown): handed back at a stop, the store kept
# failing, the run was taken over (or its writes refused).
_LEASE_LOST = "\x00lease-lost"
_RELEASE = "\x00release"
_STORAGE = "\x00storage"


def _forget(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # its awaiter (if it still has one) got it; nobody else must

    return done


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
