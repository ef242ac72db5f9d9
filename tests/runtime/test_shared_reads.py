"""Followers of one run share their store reads: a queued run polled by 100 subscribers (and
checked by each before its stream begins) costs about one read per poll, not one per subscriber.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import culm
from tests.support import collect, settings

SUBSCRIBERS = 100
BLOCK = {"turns": [[{"text": "thinking"}, {"delay": 60}, {"text": "done"}]]}
SHORT = {"turns": [[*([{"delay": 0.01}, {"text": "tok "}] * 10), {"text": "done"}]]}


async def test_subscribers_polling_a_queued_run_share_each_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with culm.Engine(settings(tmp_path)) as engine:
        engine.scripts.register("block", BLOCK)
        engine.scripts.register("short", SHORT)
        session = await engine.create_session(model="scripted:block")
        blocker = await engine.start_run(session.session_id, "wait")
        run = await engine.start_run(
            session.session_id, "go", model="scripted:short", multitask="enqueue"
        )
        reads = 0

        def counting(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def counted(*args: Any, **kwargs: Any) -> Any:
                nonlocal reads
                reads += 1
                return await method(*args, **kwargs)

            return counted

        for name in ("get_run", "read_events"):
            monkeypatch.setattr(engine.store, name, counting(getattr(engine.store, name)))

        async def subscriber() -> list[int]:
            await engine.check_run(run.run_id)
            return [event.seq for event in await collect(engine.subscribe(run.run_id))]

        streams = [asyncio.create_task(subscriber()) for _ in range(SUBSCRIBERS)]
        await asyncio.sleep(1.0)  # four polls of the queued run (one each 0.25 s)
        polled = reads
        await engine.cancel(blocker.run_id)
        results = await asyncio.gather(*streams)
        stored = [event.seq for event in await engine.store.read_events(run.run_id)]
        assert all(seqs == stored for seqs in results)
        # One read under way and one gathering the others, per poll: a read per subscriber
        # per poll would be 500 (the check, then four polls).
        assert polled <= 30, polled


async def test_closing_the_engine_ends_a_shared_read_under_way(tmp_path: Path) -> None:
    """A read whose callers left goes on by itself; closing the engine must end it before the
    store closes (it would hold a connection past the close: a ResourceWarning later)."""
    entered, never = asyncio.Event(), asyncio.Event()
    async with culm.Engine(settings(tmp_path, scheduler=False)) as engine:

        async def blocked_get_run(run_id: str) -> Any:
            entered.set()
            await never.wait()

        engine.store.get_run = blocked_get_run  # type: ignore[method-assign]
        caller = asyncio.create_task(engine.streams.reads.run("some-run"))
        await entered.wait()
        caller.cancel()  # the caller leaves; the shared read goes on
        tasks = list(engine.streams.reads._tasks)
        assert tasks and not any(task.done() for task in tasks)
    assert all(task.cancelled() for task in tasks)
