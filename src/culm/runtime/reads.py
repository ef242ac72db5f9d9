"""Store reads of a run shared by all its followers in this process.

A thousand subscribers may join one run together (or wait together for a queued run to start):
read one by one, that is a thousand ``get_run`` and page reads, and PostgreSQL load grows with
the number of subscribers. Here a read is shared: whoever asks while a read of the run waits
for its turn joins it (the page starts at the lowest cursor asked for, each caller gets what
follows its own). A read already under way is not joined, since it may have begun before what
the caller must see (a caller registers for live events first, then reads the store: the read
must start after that). So a run costs at most one read under way and one waiting, whatever the
number of its followers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from culm.domain.events import RunEvent
from culm.domain.models import Run, RunStatus
from culm.storage.base import Store


@dataclass(frozen=True, slots=True)
class Stored:
    """The run (None: not found) and its stored events after the caller's cursor; ``complete``
    unless a page limit cut them."""

    run: Run | None
    events: list[RunEvent]
    complete: bool


@dataclass(slots=True, eq=False)
class _Read:
    cursor: int | None  # the lowest cursor of its callers (None: the run alone is wanted)
    done: asyncio.Future[tuple[Run | None, list[RunEvent]]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class SharedReads:
    """One read at a time per run (plus one gathering callers), at most ``reads.value`` runs'
    reads at once in the process."""

    def __init__(self, store: Store, reads: asyncio.Semaphore, *, page: int) -> None:
        self._store = store
        self._reads = reads
        self._page = page
        self._waiting: dict[str, _Read] = {}  # per run: the read that callers may still join
        self._tasks: set[asyncio.Task[None]] = set()
        self.count = 0  # store round trips made (tests compare them with the followers)

    async def aclose(self) -> None:
        """Cancel the reads under way and wait for them: the engine is closing its store, and a
        read left running would hold one of its connections past the close."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def read(self, run_id: str, cursor: int) -> Stored:
        """The run and a page of its events after ``cursor``, from a read that began after this
        call (no events for a run not found, or pending with nothing stored after ``cursor``: a
        worker may claim it in a moment). Raises what the store raised."""
        run, page = await self._join(run_id, cursor)
        events = [event for event in page if event.seq > cursor]
        return Stored(run, events, complete=len(page) < self._page)

    async def run(self, run_id: str) -> Run | None:
        """The run alone (a stream checks that it exists before it begins)."""
        run, _ = await self._join(run_id, None)
        return run

    async def _join(self, run_id: str, cursor: int | None) -> tuple[Run | None, list[RunEvent]]:
        read = self._waiting.get(run_id)
        if read is None:
            read = self._waiting[run_id] = _Read(cursor)
            task = asyncio.create_task(self._run(run_id, read), name="shared-store-read")
            self._tasks.add(task)
            task.add_done_callback(lambda task: self._ended(run_id, read, task))
        elif cursor is not None:
            read.cursor = cursor if read.cursor is None else min(read.cursor, cursor)
        # Shielded: a caller that leaves (its client went away) ends no one else's read.
        return await asyncio.shield(read.done)

    def _ended(self, run_id: str, read: _Read, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not read.done.done():
            # Cancelled before it began (``aclose`` right after a caller asked): its body never
            # ran, so its callers would wait for ever.
            if self._waiting.get(run_id) is read:
                del self._waiting[run_id]
            read.done.cancel()

    async def _run(self, run_id: str, read: _Read) -> None:
        try:
            async with self._reads:
                # From here on a new caller needs a new read (this one may miss its events).
                if self._waiting.get(run_id) is read:
                    del self._waiting[run_id]
                run = await self._store.get_run(run_id)
                self.count += 1
                page: list[RunEvent] = []
                cursor = read.cursor
                if (
                    run is not None
                    and cursor is not None
                    and not (run.status is RunStatus.PENDING and run.last_seq <= cursor)
                ):
                    page = await self._store.read_events(run_id, after=cursor, limit=self._page)
                    self.count += 1
        except BaseException as exc:
            if self._waiting.get(run_id) is read:
                del self._waiting[run_id]
            if not read.done.done():
                read.done.set_exception(exc)
                read.done.exception()  # retrieved: a caller that left must not log it
            if not isinstance(exc, Exception):
                raise
        else:
            read.done.set_result((run, page))
