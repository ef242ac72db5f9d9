"""Batched persistence of run events, then their publication.

Events from every run go into one buffer. A writer task stores them in one transaction per batch
(group commit: after the previous write, it waits up to ``linger`` for more events unless one is
urgent or ``max_batch`` are waiting, so a streaming run's tokens share a commit), and then hands
them to ``publish``. Live subscribers do not wait for this: a runner shows an event at once when
its seq is within the run's committed seq reservation (each write here reserves ``SEQ_RESERVE``
seqs past the run's last stored one; see :mod:`culm.domain.liveness`), and holds it, adding it as
``urgent``, otherwise (and also while this writer is failing or the run's lease is in doubt:
see :mod:`culm.runtime.runner`). So after a crash a client may have seen events the store lost
(at most ``linger`` plus a write's worth), but never a seq recovery uses again: replay shows a
``gap`` there. Observers of ``publish`` (metrics, the Redis bus) only ever get stored events. A
storage failure is retried with backoff; events are never dropped. :meth:`EventBatcher.flush`
returns once everything added so far is stored and published (a run awaits it before its
terminal status becomes visible).

Flow control: adding never blocks, but a producer that can wait (a model's stream) asks
:meth:`EventBatcher.congested` after each event and, while more than ``backlog_limit`` events
await storage, awaits :meth:`EventBatcher.room` until half of them are stored. Without it, a
burst bigger than the store's pace piles up in memory, and every event of it waits for the
whole pile to be written before any subscriber sees it. While the store keeps failing, such a
producer keeps waiting (it can still be cancelled): memory stays bounded rather than growing.

Fencing and isolation: each event is added with its run's fence ``(owner, epoch)`` and the store
writes a run's events only while the run still has that owner and epoch. The store reports the
runs whose fence failed, or whose events broke a constraint (a duplicate seq), and stores the
others' events: such a run's attempt ``(run_id, epoch)`` is isolated (``on_rejected``: the manager
cancels its runner, "lease lost", writing nothing more) and its later events are dropped, so one
run never blocks the others and no seq gap is ever stored. Only errors of the store as a whole
are retried: any other error (a value the database refuses) makes the batch be written one run
at a time, and the run whose write still fails is isolated, so one bad event never stops the
others (nor, by looking like a failing store, the renewal of every lease here).

A run's end: the runner adds its terminal event and :meth:`EventBatcher.end_with` attaches
the run's :class:`~culm.storage.base.Ending` (its final message, its status) to it; the write
that stores the terminal event stores the ending in the same transaction (``append_events``'s
``endings``), so the run's last events, final message and end are one commit, not three in a
row. :meth:`EventBatcher.ended` tells the run whether its ending was written that way (not if
its events were dropped at a stop: it then ends apart).

Storage failure: once the store has kept failing for ``retry_window`` seconds, every retry
hands the runs whose events wait to ``on_unavailable`` (the manager ends them in error; their
terminal events are stored as soon as the store takes them). Once :meth:`give_up` is called (a
stop that cannot wait for the store any longer), what cannot be stored is dropped: a client may
have seen it, but its seq is reserved, so recovery never reuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence

from culm.domain.events import RunEvent, is_terminal
from culm.domain.liveness import SEQ_RESERVE
from culm.errors import StorageUnavailableError
from culm.logs import get_logger
from culm.storage.base import Ending, Store

log = get_logger(__name__)

Fence = tuple[str, int]  # (owner, epoch) a run's events are written under
# One attempt of a run here: (run_id, epoch of its fence; None when written unfenced). A process
# may still wind down one attempt of a run while it executes a later one, so what is refused is
# refused for the attempt, never for the run.
Attempt = tuple[str, int | None]
_Item = tuple[RunEvent, Fence | None]
# Failures of the store as a whole (retried); any other error is about the events written.
_TRANSIENT = (StorageUnavailableError, TimeoutError)


class EventBatcher:
    def __init__(
        self,
        store: Store,
        *,
        publish: Callable[[Sequence[RunEvent]], None],
        linger: float,
        max_batch: int,
        backlog_limit: int = 2000,
        retry_window: float = 30.0,
        on_unavailable: Callable[[set[str], BaseException], None] | None = None,
        on_rejected: Callable[[set[Attempt]], None] | None = None,
    ) -> None:
        self._store = store
        self._publish = publish
        self._linger = linger
        self._max_batch = max_batch
        self._backlog_limit = backlog_limit
        self._pending: list[_Item] = []
        self._isolated: set[Attempt] = set()  # attempts whose events the store refused
        self._forget_later: set[Attempt] = set()  # ended, with events still buffered
        self._endings: dict[Attempt, Ending] = {}  # to write with the attempt's terminal event
        self._ended: set[Attempt] = set()  # attempts whose ending is written
        self._on_rejected = on_rejected
        self._added = 0
        self._written = 0
        self._has_pending = asyncio.Event()
        self._urgent = asyncio.Event()
        # The linger: a timer armed when the buffer gets its first event, that sets ``_urgent``
        # (one callback, where ``asyncio.timeout`` around the wait cancelled the writer task).
        self._timer: asyncio.TimerHandle | None = None
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._retry_window = retry_window
        self._on_unavailable = on_unavailable
        self._failing_since: float | None = None
        self._given_up = asyncio.Event()  # give_up(): stop retrying a failing store

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="culm-event-batcher")
        self._loop = asyncio.get_running_loop()
        if self._pending:  # added before the start
            self._arm_linger()

    def add(self, event: RunEvent, urgent: bool = False, *, fence: Fence | None = None) -> None:
        """Buffer ``event``; stored only while its run has ``fence`` (None: unfenced). An
        ``urgent`` event (one a runner holds back until it is stored) cuts the linger short."""
        if self._isolated and _attempt((event, fence)) in self._isolated:
            return  # after a refused event, storing later ones would leave a seq gap
        self._pending.append((event, fence))
        self._added += 1
        if len(self._pending) == 1:
            self._has_pending.set()
            self._arm_linger()
        if urgent or len(self._pending) >= self._max_batch:
            self._urgent.set()

    def end_with(self, run_id: str, epoch: int | None, ending: Ending) -> None:
        """Write ``ending`` with the attempt's terminal event, just added (see the module's
        docstring)."""
        self._endings[(run_id, epoch)] = ending

    def ended(self, run_id: str, epoch: int | None) -> bool:
        """Whether the attempt's ending was written with its terminal event."""
        return (run_id, epoch) in self._ended

    async def flush(self) -> None:
        """Return once every event added before this call is stored."""
        target = self._added
        while self._written < target:
            if self._task is None or self._task.done():
                await self._write_now()
                continue
            progress = self._progress
            self._urgent.set()
            await progress.wait()

    async def aclose(self) -> None:
        """Store everything still buffered, then stop the writer."""
        self._closing = True
        self._has_pending.set()
        self._urgent.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self._write_now()

    def give_up(self) -> None:
        """Stop retrying a failing store: drop what it cannot take (the engine is stopping)."""
        self._given_up.set()

    @property
    def failing(self) -> bool:
        """Whether the store failed the last write of run events."""
        return self._failing_since is not None

    def failing_for(self) -> float:
        """Seconds the store has been failing to take run events (0 while it works)."""
        if self._failing_since is None:
            return 0.0
        return time.monotonic() - self._failing_since

    def isolated(self, run_id: str, epoch: int | None) -> bool:
        """Whether the store refused events of the run's attempt ``epoch`` (fence, constraint,
        or a value it refuses)."""
        return (run_id, epoch) in self._isolated

    def forget(self, attempts: Iterable[Attempt]) -> None:
        """The attempts ended here: drop what is remembered about them, now or, for one with
        events still buffered (a lost lease ends without a flush), once those are written."""
        ended = set(attempts)
        self._isolated -= ended
        self._ended -= ended
        for attempt in ended:
            self._endings.pop(attempt, None)
        if self._pending:
            self._forget_later |= {item for item in map(_attempt, self._pending) if item in ended}

    def _forget_written(self) -> None:
        buffered = set(map(_attempt, self._pending))
        done = self._forget_later - buffered
        self._isolated -= done
        self._ended -= done  # an end written after the attempt was forgotten
        self._forget_later -= done

    @property
    def backlog(self) -> int:
        return self._added - self._written

    def congested(self) -> bool:
        return self.backlog > self._backlog_limit

    async def room(self) -> None:
        """Return once no more than half of ``backlog_limit`` events await storage (at once
        when nothing is writing them: flush and close store those)."""
        while self.backlog > self._backlog_limit // 2:
            if self._task is None or self._task.done():
                return
            progress = self._progress
            self._urgent.set()
            await progress.wait()

    def _arm_linger(self) -> None:
        """Write in ``linger`` seconds (the buffer just got its first event)."""
        if self._linger > 0 and self._timer is None and self._task is not None:
            self._timer = self._loop.call_later(self._linger, self._urgent.set)

    async def _run(self) -> None:
        while not self._closing:
            if self._linger > 0:  # the linger's timer, an urgent event, a flush or the close
                await self._urgent.wait()
            else:
                await self._has_pending.wait()
            await self._write_now()

    async def _write_now(self) -> None:
        # Events stay in the buffer until stored, so nothing is lost if storing is interrupted.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._urgent.clear()
        self._has_pending.clear()
        count = len(self._pending)
        if count:
            batch = self._pending[:count]
            stored = await self._store_with_retry(batch)
            del self._pending[:count]
            if self._pending:
                self._has_pending.set()
                self._arm_linger()
            try:
                if stored:
                    self._publish(stored)
            except Exception:
                log.exception("publishing stored run events failed")
        self._written += count
        if self._forget_later:
            self._forget_written()
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    async def _store_with_retry(self, batch: list[_Item]) -> list[RunEvent]:
        """Store ``batch``, retrying a failing store with backoff; the events stored (none of
        the runs the store refused; none at all once :meth:`give_up` dropped them).

        Only a store failure (``StorageUnavailableError``, a timeout) is retried. Any other
        error is about the events themselves (a value the database refuses): the batch is then
        written one run at a time, so only the run whose events cause it is isolated."""
        stored: list[RunEvent] = []
        todo = batch
        split = False  # after an error of the events themselves: one run per write
        delay = 0.05
        while True:
            # The common case costs one pass: no attempt isolated, one attempt per run.
            fences = _fences_of(todo)
            if fences is None or self._isolated:
                self._refuse_stale(todo)
                todo = [item for item in todo if _attempt(item) not in self._isolated]
                fences = None
            if not todo:
                return stored
            part, rest = _first_run(todo) if split else (todo, [])
            if fences is None or split:
                fences = _fences_of(part) or {}
            events = [event for event, _ in part]
            ending = self._endings_in(part) if self._endings else {}
            endings = {run_id: self._endings[attempt] for run_id, attempt in ending.items()}
            try:
                rejected = await self._store.append_events(
                    events, fences=fences, reserve=SEQ_RESERVE, endings=endings or None
                )
                self._failing_since = None
            except _TRANSIENT as exc:
                if self._given_up.is_set():
                    log.error(
                        "the store keeps failing; run events dropped at stop", events=len(todo)
                    )
                    return stored
                log.error("storing run events failed; retrying", error=str(exc), events=len(events))
                self._unavailable(events, exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._given_up.wait()
                delay = min(delay * 2, 1.0)
                continue
            except Exception as exc:
                self._failing_since = None  # the store answered: it refused these events
                if not split and len({event.run_id for event in events}) > 1:
                    split = True  # write run by run, to find the one it refuses
                    continue
                log.error(
                    "the store refused a run's events", run_id=events[0].run_id, error=str(exc)
                )
                rejected = {events[0].run_id}
            stored += self._refused(part, rejected)
            for attempt in ending.values():
                self._endings.pop(attempt, None)
                if attempt[0] not in rejected:
                    self._ended.add(attempt)
            todo = rest

    def _endings_in(self, part: list[_Item]) -> dict[str, Attempt]:
        """The runs whose terminal event is in ``part`` with an ending to write: run_id ->
        attempt (an attempt's ending waits for the write that holds its terminal event)."""
        found: dict[str, Attempt] = {}
        for item in part:
            if is_terminal(item[0]) and (attempt := _attempt(item)) in self._endings:
                found[attempt[0]] = attempt
        return found

    def _refused(self, part: list[_Item], rejected: set[str]) -> list[RunEvent]:
        """The events of ``part`` stored: not those of the runs the store ``rejected`` (one
        attempt of each in ``part``), which are isolated."""
        if rejected:
            self._isolate({_attempt(item) for item in part if item[0].run_id in rejected})
        return [event for event, _ in part if event.run_id not in rejected]

    def _refuse_stale(self, items: list[_Item]) -> None:
        """Isolate the events of an older attempt of a run whose later attempt (claimed again
        by this process) has events here too: its fence cannot hold any more, and one write
        takes one fence per run."""
        latest: dict[str, int] = {}
        for run_id, epoch in map(_attempt, items):
            if epoch is not None:
                latest[run_id] = max(epoch, latest.get(run_id, epoch))
        stale: set[Attempt] = {
            (run_id, epoch)
            for run_id, epoch in map(_attempt, items)
            if epoch is not None and epoch < latest[run_id]
        }
        if stale - self._isolated:
            self._isolate(stale - self._isolated)

    def _isolate(self, attempts: set[Attempt]) -> None:
        log.warning("the store refused a run's events: isolating it", runs=sorted(attempts))
        self._isolated.update(attempts)
        if self._on_rejected is not None:
            self._on_rejected(attempts)

    def _unavailable(self, batch: list[RunEvent], exc: BaseException) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if self._on_unavailable is not None and now - self._failing_since >= self._retry_window:
            self._on_unavailable({event.run_id for event in batch}, exc)


def _fences_of(items: list[_Item]) -> dict[str, Fence] | None:
    """Each run's fence among ``items``; None when a run has two (two of its attempts)."""
    fences: dict[str, Fence] = {}
    for event, fence in items:
        if fence is not None:
            known = fences.setdefault(event.run_id, fence)
            if known is not fence and known != fence:
                return None
    return fences


def _attempt(item: _Item) -> Attempt:
    event, fence = item
    return (event.run_id, None if fence is None else fence[1])


def _first_run(items: list[_Item]) -> tuple[list[_Item], list[_Item]]:
    """The items of the first item's run, and the others (order kept)."""
    run_id = items[0][0].run_id
    return (
        [item for item in items if item[0].run_id == run_id],
        [item for item in items if item[0].run_id != run_id],
    )
