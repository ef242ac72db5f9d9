"""The waiter's helpers alone, on the virtual clock: how often it reads the store for a run that
executes in another process, and how it waits for the first of several events. Its ``cancel``,
``wait`` and ``wait_tree`` are tested through the run manager's (test_manager.py,
test_manager_start.py) and end to end (test_engine_runs, test_cancel_bus, test_wait_backoff)."""

from __future__ import annotations

import asyncio

import pytest

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
