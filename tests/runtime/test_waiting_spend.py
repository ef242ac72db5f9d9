"""What a resumed run's budget starts from (``culm.runtime.waiting.spent_before``): the
``round_completed`` events the run and its sub-agents stored, read back from a real store."""

from __future__ import annotations

from pathlib import Path

import culm
from culm.loop.spend import Spend
from culm.runtime import waiting
from tests.support import settings


async def test_the_spend_before_a_wait_is_what_the_stored_rounds_add_up_to(
    tmp_path: Path,
) -> None:
    async with culm.Engine(settings(tmp_path, scheduler=False)) as engine:
        runs = []
        for message in ("one", "two"):
            run = await engine.run(message, model="scripted:echo")
            runs.append(await engine.wait(run.run_id))
        spent = await waiting.spent_before(engine.store, runs[0])
        expected = Spend()
        for event in await engine.store.read_events(runs[0].run_id):
            if event.type == "round_completed":
                expected.add(event.usage, event.cost_usd)  # type: ignore[attr-defined]
    assert expected.tokens > 0
    assert spent == expected  # its own rounds, not another run's
