"""A run longer than several pages of the store, finished, for the tests of following a run
page by page (``Streams`` reads the store ``STORE_PAGE`` events at a time; here 10)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import culm
from culm.domain.events import RunEvent
from culm.runtime import streams
from tests.support import settings

PAGE = 10


@contextlib.asynccontextmanager
async def finished_long_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[culm.Engine, str, list[RunEvent]]]:
    """An engine, the id of its one finished run of more than four pages, and its events."""
    monkeypatch.setattr(streams, "STORE_PAGE", PAGE)
    chunks = [{"text": f"t{i} "} for i in range(40)]
    async with culm.Engine(settings(tmp_path, scheduler=False)) as engine:
        engine.scripts.register("long", {"turns": [chunks]})
        run = await engine.run("hello", model="scripted:long")
        await engine.wait(run.run_id)
        stored = await engine.store.read_events(run.run_id)
        assert len(stored) > 4 * PAGE
        yield engine, run.run_id, stored
