"""Finished runs leave nothing behind: no runner, subscription, task or registry entry."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections import Counter
from pathlib import Path

import pytest

import culm
from culm.runtime.runner import Runner
from culm.runtime.subscription import Subscription
from tests.support import collect, settings, settled_engine_tasks, task_kinds


def _alive(kind: type) -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, kind))


@pytest.mark.timeout(120)
async def test_hundreds_of_runs_leave_no_state_behind(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path)) as engine:
        # The engine's own tasks, once its dispatcher has claimed a first run (it starts its
        # wake-up listener lazily); a short-lived one of them may end meanwhile, so the test
        # looks for kinds of tasks that were not there before.
        baseline_tasks = await settled_engine_tasks(engine)

        async def one(i: int) -> None:
            run = await engine.run(f"hi {i}", model="scripted:echo")
            if i % 2:
                await collect(engine.subscribe(run.run_id))
            else:
                await engine.wait(run.run_id)

        # Four waves of 50: more runs than any cache of finished runs holds (32), each wave
        # concurrent enough to share the engine's pools and queues.
        for wave in range(4):
            await asyncio.gather(*(one(wave * 50 + i) for i in range(50)))
        # `wait` returns once the terminal status is stored; each run task still takes a last
        # step (starting the session's next queued run), after which its runner goes (under
        # load a runner was seen alive at the first look). Let those steps finish.
        with contextlib.suppress(TimeoutError):  # the asserts below name what is left
            async with asyncio.timeout(10):
                while task_kinds() - baseline_tasks or _alive(Runner):
                    await asyncio.sleep(0.05)
        assert len(engine.registry) == 0
        assert engine.registry._changes == {}
        assert engine.registry._session_subscribers == {}
        assert _alive(Runner) == 0
        assert _alive(Subscription) == 0
        assert task_kinds() - baseline_tasks == Counter()
        assert len(await engine.list_runs(status="completed", limit=2000)) == 201
