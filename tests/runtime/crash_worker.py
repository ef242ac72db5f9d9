"""Run by tests as a separate process: start slow runs, print their ids, then wait to be killed.

With a third argument ``watch``, a run streaming tokens is started instead, and every event a
live subscriber receives is printed as ``seen <seq> <type>`` the moment it arrives."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import culm


async def watch(home: str) -> None:
    async with culm.Engine(culm.Settings(home=Path(home))) as engine:
        engine.scripts.register("ticker", {"turns": [[{"text": "t"}, {"delay": 0.001}] * 100000]})
        run = await engine.run("go", model="scripted:ticker")
        print(run.run_id, flush=True)
        async for event in engine.subscribe(run.run_id):
            print("seen", event.seq, event.type, flush=True)


async def main(home: str, count: int) -> None:
    async with culm.Engine(culm.Settings(home=Path(home))) as engine:
        engine.scripts.register("stuck", {"turns": [[{"text": "working"}, {"delay": 3600}]]})
        for _ in range(count):
            session = await engine.create_session(model="scripted:stuck")
            run = await engine.start_run(session.session_id, "go")
            queued = await engine.start_run(session.session_id, "after", multitask="enqueue")
            print(run.run_id, queued.run_id, flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    if sys.argv[3:] == ["watch"]:
        asyncio.run(watch(sys.argv[1]))
    else:
        asyncio.run(main(sys.argv[1], int(sys.argv[2])))
