"""The waiter's helpers alone, on the virtual clock: how often it reads the store for a run that
executes in another process, and how it waits for the first of several events. Its ``cancel``,
``wait`` and ``wait_tree`` are tested through the run manager's (test_manager.py,
test_manager_start.py) and end to end (test_engine_runs, test_cancel_bus, test_wait_backoff)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest

from culm.domain.models import Run, RunStatus
from culm.runtime import waiter
from tests.clock import run_virtual

# In memory only: nothing here touches a database.
pytestmark = pytest.mark.backends("sqlite")


def test_a_waiter_reads_the_store_by_what_tells_it_of_the_runs_end() -> None:
    ended, quiet = asyncio.Event(), asyncio.Event()
    ended.set()
    assert waiter._poll(quiet, follows=True) == 2.0  # the bus brings its end: a safety net
    assert waiter._poll(quiet, follows=False) == 0.25  # nothing else tells it
    assert waiter._poll(ended, follows=True) == 0.02  # its end is stored: its status follows
    assert waiter._poll(ended, follows=False, ending=1.5) == 1.5


def test_any_of_returns_at_the_first_event_or_the_timeout_and_leaves_no_task() -> None:
    async def main() -> tuple[float, float, int]:
        loop = asyncio.get_running_loop()
        first, never = asyncio.Event(), asyncio.Event()
        loop.call_later(3, first.set)
        start = loop.time()
        await waiter._any_of([never, first], timeout=60)
        woken = loop.time() - start
        start = loop.time()
        await waiter._any_of([never], timeout=7)
        timed_out = loop.time() - start
        await asyncio.sleep(0)  # the cancelled waits end
        return woken, timed_out, len(asyncio.all_tasks()) - 1

    assert run_virtual(main()) == (3.0, 7.0, 0)


class _Elsewhere:
    """A run executing in another process, as the waiter sees it: the bus follows it and brings
    its terminal event at ``ends_at``; the store says terminal from its ``terminal_after``-th
    read (a finish_run being retried meanwhile)."""

    crosses_processes = True
    state = "ok"

    def __init__(self, ends_at: float, terminal_after: int) -> None:
        self.reads: list[float] = []
        self._ends_at = ends_at
        self._terminal_after = terminal_after

    async def get_run(self, run_id: str) -> Run:
        self.reads.append(asyncio.get_running_loop().time())
        done = len(self.reads) >= self._terminal_after
        status = RunStatus.COMPLETED if done else RunStatus.RUNNING
        return Run(run_id=run_id, session_id="s", model="m", status=status)

    def get(self, run_id: str) -> None:
        return None  # not executing here

    @contextlib.contextmanager
    def watch(self, run_id: str) -> Iterator[asyncio.Event]:
        yield asyncio.Event()  # never launched here

    def watch_state(self) -> asyncio.Event:
        return asyncio.Event()

    @contextlib.asynccontextmanager
    async def terminal_notice(self, run_id: str) -> AsyncIterator[asyncio.Event]:
        ended = asyncio.Event()
        asyncio.get_running_loop().call_later(self._ends_at, ended.set)
        yield ended


def test_after_the_terminal_event_the_store_is_read_at_once_then_every_20_ms_doubling() -> None:
    async def main() -> tuple[list[float], RunStatus]:
        elsewhere = _Elsewhere(ends_at=1.0, terminal_after=6)
        runs = waiter.RunWaiter(store=elsewhere, registry=elsewhere, bus=elsewhere)  # type: ignore[arg-type]
        run = await runs.wait("r1")
        return elsewhere.reads, run.status

    reads, status = run_virtual(main())
    assert status is RunStatus.COMPLETED
    # Once when it starts following; at the notice; then 20, 40, 80, 160 ms apart.
    assert reads == pytest.approx([0.0, 1.0, 1.02, 1.06, 1.14, 1.30])
