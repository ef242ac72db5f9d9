"""The claim/dispatch seam: a worker's loop that takes ready runs from the queue.

The queue is the ``runs`` table: a run is reserved ready (pending, unowned) and the store sends a
wake-up in the same transaction. The :class:`Dispatcher` waits for a wake-up (or, should one be
lost, the safety poll of ``claim_poll_seconds``), claims up to its free capacity in one statement
(``claim_runs``: owner set, epoch bumped, lease in database time) and hands each run to the run
manager, which executes it locally. Embedded ``culm serve`` and ``culm worker`` run this same
code; ``culm serve --no-worker`` and ``culm run`` run none.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass

from culm.domain.events import Error
from culm.domain.models import Run, RunStatus, Usage
from culm.domain.time import utc_now
from culm.errors import LeaseLostError
from culm.logs import get_logger
from culm.storage.base import Store

log = get_logger(__name__)
# Seconds a worker whose turn a wake-up is not waits before it claims (× 1 to 2, by fullness).
STAGGER = 0.05
# Launches of one run that may fail in this process before it ends the run in error: a hand-back
# counts no attempt, so a run whose launch always fails would otherwise cycle between workers for
# good (its epoch climbing, ``max_attempts`` never reached, its session's slot held).
LAUNCH_ATTEMPTS = 3
# Seconds (doubled at each failure) this process leaves a run whose launch failed to the others.
LAUNCH_BACKOFF = 1.0
LAUNCH_FAILED = "launch_failed"


@dataclass(slots=True)
class WorkerCounters:
    """Cumulative counts of one worker process, written into its ``workers`` row at every
    heartbeat (and read by ``/metrics``)."""

    claims: int = 0
    takeovers: int = 0
    fenced_writes: int = 0


class Dispatcher:
    """Claims ready runs while this process has room for them, and launches them.

    ``active`` counts the runs executing here (sub-agents included: capacity is per worker);
    ``held`` names the runs this process still holds (never claimed again meanwhile);
    ``launch`` starts one claimed run. Call :meth:`freed` when a run ends here, so a dispatcher
    that was full looks again at once.
    """

    def __init__(
        self,
        store: Store,
        *,
        owner: str,
        concurrency: int,
        lease_seconds: float,
        poll_seconds: float,
        active: Callable[[], int],
        held: Callable[[], Collection[str]],
        launch: Callable[[Run], object],
        counters: WorkerCounters,
        peers: Callable[[], Sequence[str]] = tuple,
    ) -> None:
        self._store = store
        self._owner = owner
        self._concurrency = concurrency
        self._lease_seconds = lease_seconds
        self._poll = poll_seconds
        self._active = active
        self._held = held
        self._launch = launch
        self._counters = counters
        self._peers = peers
        self._freed = asyncio.Event()
        self._stopping = asyncio.Event()
        # One claim at a time per process (capacity is counted before each), and how many
        # have started: a claim started after a run was reserved sees that run.
        self._claiming = asyncio.Lock()
        self._claims_started = 0
        self._task: asyncio.Task[None] | None = None
        # Runs whose launch failed here: run id -> (failures, monotonic time to retry from).
        self._launch_failures: dict[str, tuple[int, float]] = {}

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="culm-dispatcher")

    def freed(self) -> None:
        self._freed.set()

    async def aclose(self) -> None:
        """Stop claiming. A claim under way completes (its runs are launched, so none is left
        claimed but never executed); the wait for the next one is cut short."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            await task

    async def _run(self) -> None:
        wakeups = self._store.wakeups()
        try:
            while not self._stopping.is_set():
                try:
                    again = await self.claim()
                except Exception:
                    log.exception("claiming runs failed; retrying at the next poll")
                    again = False
                if again:
                    continue  # there may be more ready runs than one claim took
                await self._wait(wakeups.wait)
                delay = self.stagger(wakeups.take_hints())
                if delay > 0:
                    await self._wait(self._sleep, delay)
        finally:
            with contextlib.suppress(Exception):
                await wakeups.aclose()

    async def claim(self) -> bool:
        """Claim and launch up to the free capacity; True to claim again at once: it took all
        the room it had (more may be ready), or it had none and a run has ended since (or the
        poll passed). Only a claim that got fewer runs than it had room for waits for a wake-up:
        nothing wakes a full worker's backlog when one of its runs ends."""
        if self._concurrency - self._active() <= 0:
            self._freed.clear()
            await self._wait(self._wait_freed)
            return not self._stopping.is_set()
        async with self._claiming:
            return await self._claim_locked()

    async def claim_now(self) -> None:
        """Claim at once, for a run this process has just reserved: with room here, the run
        is launched before its ``start_run`` returns, so its first subscribers attach to it
        live instead of reading the store. Callers that arrive together share the claims:
        one started after a caller's reservation was committed covers it. A failure is left to
        the dispatcher's loop (the run stays ready; the poll claims it)."""
        wanted = self._claims_started + 1
        async with self._claiming:
            if self._claims_started >= wanted or self._stopping.is_set():
                return
            try:
                await self._claim_locked()
            except Exception:
                log.exception("claiming a run just reserved failed; the dispatcher retries")

    async def _claim_locked(self) -> bool:
        self._claims_started += 1
        free = self._concurrency - self._active()
        if free <= 0:
            return True  # full meanwhile: the loop waits for a run to end
        # Not a run whose earlier attempt is still winding down here (lost, then made ready
        # again): one process never holds two attempts of one run.
        runs = await self._store.claim_runs(
            self._owner, limit=free, lease_seconds=self._lease_seconds, exclude=self._excluded()
        )
        self._counters.claims += len(runs)
        # Sub-agents started here while the claim was awaited take room too (they cannot wait
        # for it): launch only what fits now, hand the rest back at once.
        room = max(self._concurrency - self._active(), 0)
        back = runs[room:]
        failed: list[Run] = []
        for run in runs[:room]:
            if not self._launched(run):
                (failed if self._give_up(run.run_id) else back).append(run)
        if back:
            await self._hand_back(back)
        for run in failed:
            await self._end_in_error(run)
        return len(runs) == free and not back and not failed

    def _excluded(self) -> set[str]:
        """The runs this claim must not take: those still held here, and those whose launch
        failed here lately (left to other workers for a while, never claimed back at once)."""
        now = time.monotonic()
        backing_off = {
            run_id for run_id, (_, until) in self._launch_failures.items() if until > now
        }
        return {*self._held(), *backing_off}

    def _launched(self, run: Run) -> bool:
        """Launch ``run``; False (logged) when that raised: one run's failure must not leave the
        rest of its claim owned here but never executed until their leases run out."""
        try:
            self._launch(run)
        except Exception:
            log.exception("launching a claimed run failed", run_id=run.run_id)
            return False
        self._launch_failures.pop(run.run_id, None)
        return True

    def _give_up(self, run_id: str) -> bool:
        """Count a failed launch of ``run_id``: True once it failed ``LAUNCH_ATTEMPTS`` times
        here (end it), else back off from it for a while (doubling)."""
        failures = self._launch_failures.get(run_id, (0, 0.0))[0] + 1
        if failures >= LAUNCH_ATTEMPTS:
            self._launch_failures.pop(run_id, None)
            return True
        backoff = LAUNCH_BACKOFF * 2 ** (failures - 1)
        self._launch_failures[run_id] = (failures, time.monotonic() + backoff)
        return False

    async def _end_in_error(self, run: Run) -> None:
        """End a run that cannot be launched here in error, with its terminal event, under
        this claim's fence (lost meanwhile: its new owner decides). Should the store fail, it
        is left claimed: its lease runs out and the sweeper takes it (an attempt counted)."""
        message = f"the run could not be launched ({LAUNCH_ATTEMPTS} attempts)"
        event = Error(message=message, code=LAUNCH_FAILED).stamped(
            seq=run.last_seq + 1, run_id=run.run_id, session_id=run.session_id, ts=utc_now()
        )
        fence = (self._owner, run.epoch)
        try:
            if run.run_id in await self._store.append_events([event], fences={run.run_id: fence}):
                return  # fenced out: no longer ours
            await self._store.finish_run(
                run.run_id, fence=fence, status=RunStatus.ERROR, error=message, usage=Usage()
            )
        except LeaseLostError:
            return
        except Exception:
            log.exception("ending a run that cannot be launched failed", run_id=run.run_id)
            return
        log.error("ended a run that cannot be launched in error", run_id=run.run_id)

    async def _hand_back(self, runs: list[Run]) -> None:
        """Release claimed runs that will not execute here: ready again at once for any worker
        (never started, so no attempt is counted). Should that fail, their leases run out."""
        try:
            fences = {run.run_id: run.epoch for run in runs}
            # Clean: a run whose launch failed showed nothing under this claim.
            await self._store.release_runs(self._owner, fences, clean=True)
        except Exception:
            log.exception("handing back claimed runs failed; their leases run out", runs=len(runs))

    def stagger(self, hints: Sequence[str]) -> float:
        """How long to wait before claiming after a wake-up: not at all when a reservation it
        heard names this worker's turn (by the run id, over the live claimers sorted, the same
        list in every worker), when one names none (other wake-ups), or when it knows no
        claimers (SQLite's in-process wake-ups, the first heartbeat not yet beaten). Otherwise
        ``STAGGER`` seconds, more the fuller it is: a run is claimed by the one worker whose
        turn it is while the others stay idle, instead of every worker running a claim
        transaction at once for one run (the thundering herd); should that worker not claim
        it (full, stalled, gone), the others still do, a little later."""
        peers = self._peers()
        if not hints or self._owner not in peers:
            return 0.0
        for hint in hints:
            if not hint or peers[zlib.crc32(hint.encode()) % len(peers)] == self._owner:
                return 0.0
        fullness = min(self._active() / max(self._concurrency, 1), 1.0)
        return STAGGER * (1 + fullness)

    async def _sleep(self, seconds: float) -> bool:
        await asyncio.sleep(seconds)
        return True

    async def _wait_freed(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._freed.wait()
        return self._freed.is_set()

    async def _wait(
        self, wait: Callable[[float], Awaitable[bool]], timeout: float | None = None
    ) -> None:
        """Await ``wait(timeout)`` (default: a wake-up or the poll), or until :meth:`aclose`
        is called."""
        waiting = asyncio.ensure_future(wait(self._poll if timeout is None else timeout))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiting, stopping):
                task.cancel()
            await asyncio.gather(waiting, stopping, return_exceptions=True)
        if waiting.done() and not waiting.cancelled() and waiting.exception() is not None:
            # The wake-ups failed (their connection lost): poll, never spin.
            log.error("waiting for wake-ups failed", error=str(waiting.exception()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll):
                    await self._stopping.wait()
