"""Exact resume: a cursor ``N`` gets every event with ``seq > N``, in order, once.

The contract (docs/ARCHITECTURE.md, "Late and reconnecting subscribers"): with a cursor, every
event with ``seq > N``, in order, no duplicates, then live. A live run's stream reads the store
until the runner's in-memory ring covers the cursor, then attaches to the ring; the store is read
in pages. Each boundary of the ring (its oldest seq, the seq before it, the newest) and of a
store page is a place where an off-by-one skips or repeats one event, so every one is probed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from culm.domain.events import RunEvent, Token
from culm.domain.models import Run
from culm.runtime.runner import RING_CAPACITY, Runner
from culm.runtime.streams import STORE_PAGE
from tests.contract.gate import held_run
from tests.support import collect
from tests.support import settings as engine_settings


async def _until(stream: AsyncIterator[RunEvent], last: int) -> list[RunEvent]:
    """The stream's events up to seq ``last`` (the run is still live, so it does not end)."""
    events: list[RunEvent] = []
    async with asyncio.timeout(20):
        async for event in stream:
            events.append(event)
            if event.seq >= last:
                break
    return events


def _boundaries(oldest: int, last: int) -> set[int]:
    around = (0, 1, oldest - 2, oldest - 1, oldest, oldest + 1, STORE_PAGE - 1, STORE_PAGE)
    return {cursor for cursor in (*around, STORE_PAGE + 1, last - 1) if 0 <= cursor < last}


async def test_a_cursor_at_every_boundary_of_the_ring_and_the_store_resumes_exactly(
    tmp_path: Path,
) -> None:
    async with held_run(engine_settings(tmp_path)) as (engine, run, runner, gate):
        while runner.last_seq < STORE_PAGE + RING_CAPACITY + 10:  # past a page and a ring
            runner.emit(Token(content=str(runner.last_seq)))
        await engine.batcher.flush()  # stored, so published into the ring
        last = runner.last_seq
        oldest = last - RING_CAPACITY + 1  # the ring holds the newest RING_CAPACITY events
        for cursor in sorted(_boundaries(oldest, last)):
            live = await _until(engine.subscribe(run.run_id, after=cursor), last)
            assert [e.seq for e in live] == list(range(cursor + 1, last + 1)), cursor
        gate.release.set()
        full = await collect(engine.subscribe(run.run_id))
        assert [e.seq for e in full] == list(range(1, len(full) + 1))
        for cursor in sorted(_boundaries(oldest, last) | {len(full) - 1, len(full)}):
            replay = await collect(engine.subscribe(run.run_id, after=cursor))
            assert replay == full[cursor:], cursor


def _ring_runner() -> Runner:
    """A runner whose store publishes each event back at once, as the batcher does."""
    run = Run(run_id="r", session_id="s", model="scripted:echo")
    runner = Runner(
        run, persist=lambda e, u: runner.stored(e), fan_out_session=lambda e: None, queue_size=10
    )
    return runner


@settings(max_examples=300, deadline=None)
@given(
    emitted=st.integers(min_value=0, max_value=3 * RING_CAPACITY),
    data=st.data(),
)
def test_the_ring_attaches_exactly_after_the_cursor_or_sends_to_the_store(
    emitted: int, data: st.DataObject
) -> None:
    """Attaching at ``cursor`` either starts at ``cursor + 1`` exactly, or (only when the ring no
    longer holds ``cursor + 1``) refuses, so the stream reads the store first."""
    edges = {0, emitted, emitted - RING_CAPACITY, emitted - RING_CAPACITY + 1}
    edges |= {emitted - RING_CAPACITY - 1, emitted - 1}
    cursor = data.draw(
        st.one_of(
            st.sampled_from(sorted(c for c in edges if 0 <= c <= emitted)),
            st.integers(min_value=0, max_value=emitted),
        )
    )

    async def check() -> None:
        runner = _ring_runner()
        for i in range(emitted):
            runner.emit(Token(content=str(i)))
        oldest = max(emitted - RING_CAPACITY + 1, 1)
        subscription = runner.attach(cursor)
        if subscription is None:
            assert cursor + 1 < oldest  # refused only when the ring lost cursor + 1
            return
        runner.emit(Token(content="live"))
        assert [e.seq for e in await subscription.next_batch()] == list(
            range(cursor + 1, emitted + 2)
        )

    asyncio.run(check())
