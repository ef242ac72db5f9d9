"""A fake clock, and engines that look at their schedules only when a test says so."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import culm
from culm.scheduler.models import ScheduleRun

STUCK = {"turns": [[{"text": "working"}, {"delay": 3600}]]}
FAILING = {"turns": [[{"error": {"kind": "auth"}}]]}


class FakeClock:
    """``clock()`` is ``now``; tests move it with :meth:`advance` or :meth:`set`."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now

    def set(self, now: datetime) -> datetime:
        self.now = now
        return now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 23, 8, 0, tzinfo=UTC))  # a Monday


def engine_settings(home: Path, **overrides: Any) -> culm.Settings:
    """The ticker's own loop waits an hour between looks: tests call ``tick()`` themselves
    (it still wakes when a fired run ends)."""
    return culm.Settings(home=home, schedule_tick=3600, **overrides)


@contextlib.asynccontextmanager
async def new_engine(home: Path, clock: FakeClock, **overrides: Any) -> AsyncIterator[culm.Engine]:
    """A started engine with the `stuck` and `failing` scripts. Leaving it stops it with its
    runs wherever they are (test_shutdown.py checks that never hangs)."""
    engine = culm.Engine(engine_settings(home, **overrides), clock=clock)
    engine.scripts.register("stuck", STUCK)
    engine.scripts.register("failing", FAILING)
    async with engine:
        yield engine


@pytest.fixture
async def engine(tmp_path: Path, clock: FakeClock) -> AsyncIterator[culm.Engine]:
    async with new_engine(tmp_path / "home", clock) as started:
        yield started


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = 10) -> None:
    """Poll ``check`` until it holds."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


async def settled_fires(
    engine: culm.Engine, schedule_id: str, count: int, *, timeout: float = 10
) -> list[ScheduleRun]:
    """The schedule's fires (oldest first) once there are ``count`` and none is running or
    queued."""
    fires: list[ScheduleRun] = []

    async def settled() -> bool:
        nonlocal fires
        fires = list(reversed(await engine.schedules.runs(schedule_id)))
        return len(fires) == count and all(
            fire.status not in ("running", "queued") for fire in fires
        )

    try:
        await eventually(settled, timeout=timeout)
    except TimeoutError:
        raise AssertionError(f"fires did not settle: {fires}") from None
    return fires


def cron(expr: str, **fields: Any) -> dict[str, Any]:
    """A schedule body with a cron trigger and the echo model."""
    body: dict[str, Any] = {
        "name": "test",
        "trigger": {"type": "cron", "expr": expr},
        "run_config": {"message": "tick", "model": "scripted:echo"},
    }
    return body | fields
