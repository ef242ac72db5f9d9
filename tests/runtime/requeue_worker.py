"""Run by tests as a separate process: start an engine that re-queues interrupted runs (at most
``max_attempts`` attempts), print the attempt that run ``run_id`` runs again in once it is
running (or ``ended <status>`` if it was not re-queued), then wait to be killed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import culm


async def main(home: str, max_attempts: int, run_id: str) -> None:
    engine_settings = culm.Settings(
        home=Path(home), recovery_policy="requeue", max_attempts=max_attempts
    )
    engine = culm.Engine(engine_settings)
    engine.scripts.register("stuck", {"turns": [[{"text": "working"}, {"delay": 3600}]]})
    async with engine:
        attempt = 0
        async for event in engine.subscribe(run_id):
            if event.type == "execution_started":
                attempt = event.attempt
            elif event.type == "token" and attempt > 1:  # running again, and stored so
                print("running", attempt, flush=True)
                break
        else:
            print("ended", (await engine.get_run(run_id)).status.value, flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
