"""A run's terminal event that the store refuses (the run was taken over just before it) is
shown to no client: neither the run's stream nor the session's stream sees the run end while
another worker executes it (review finding 1)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import culm
from culm.domain.events import RunEvent, is_terminal
from culm.storage.base import Ending, Fence
from culm.storage.schema import runs
from culm.storage.sql import SqlStore
from tests.support import settings


class TakenOverAtTheEnd(SqlStore):
    """The real store; another worker takes the run over (bumps its epoch) just before its
    terminal event is written, so the store refuses the terminal by its fence."""

    async def append_events(
        self,
        events: Sequence[RunEvent],
        *,
        fences: Mapping[str, Fence] | None = None,
        reserve: int = 0,
        endings: Mapping[str, Ending] | None = None,
    ) -> set[str]:
        for event in events:
            if is_terminal(event):
                taken = runs.update().where(runs.c.run_id == event.run_id)
                await self.write(
                    lambda conn, taken=taken: conn.execute(
                        taken.values(epoch=runs.c.epoch + 1, owner="elsewhere")
                    )
                )
        return await super().append_events(events, fences=fences, reserve=reserve, endings=endings)


async def _drain(stream: object, into: list[RunEvent]) -> None:
    async for event in stream:  # type: ignore[attr-defined]
        into.append(event)


async def test_a_refused_terminal_event_reaches_no_subscriber(
    tmp_path: Path, database_url: str
) -> None:
    url = database_url
    config = settings(tmp_path / "home", database_url=url, scheduler=False, lease_seconds=600.0)
    engine = culm.Engine(config, store=TakenOverAtTheEnd(url))
    async with engine:
        engine.scripts.register("slow", {"turns": [[{"text": "x"}, {"delay": 0.5}]]})
        session = await engine.create_session(model="scripted:slow")
        seen_session: list[RunEvent] = []
        seen_run: list[RunEvent] = []
        session_task = asyncio.create_task(
            _drain(engine.subscribe_session(session.session_id), seen_session)
        )
        await asyncio.sleep(0.2)  # the session subscriber is attached
        run = await engine.start_run(session.session_id, "go")
        run_task = asyncio.create_task(_drain(engine.subscribe(run.run_id), seen_run))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                await asyncio.shield(run_task)
        stored = await engine.get_run(run.run_id)
        for task in (run_task, session_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert stored.owner == "elsewhere"
    assert not stored.status.is_terminal
    assert seen_run and "token" in [e.type for e in seen_run]  # it did stream, live
    assert not any(is_terminal(e) for e in seen_run)
    assert not any(is_terminal(e) for e in seen_session)
