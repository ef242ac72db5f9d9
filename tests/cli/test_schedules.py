"""``culm schedules …``: the real command in a subprocess against a real server."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

import culm
from culm.cli.schedules import seconds, trigger_of
from culm.errors import UserError
from culm.scheduler.models import ScheduleRun
from tests.api.conftest import Server, running_server
from tests.cli.conftest import Result, run_culm
from tests.scheduler.conftest import FakeClock

UUID = r"[0-9a-f-]{36}"


Cli = Callable[..., Awaitable[Result]]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """``await cli("schedules", "list", server=url)``: the real command, run to its end while
    the event loop keeps serving."""
    home = tmp_path / "cli"
    home.mkdir()

    async def run(*args: str, server: str) -> Result:
        return await run_culm(home, *args, "--server", server)

    return run


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    clock = FakeClock(datetime(2026, 11, 23, 8, 0, tzinfo=UTC))  # Monday, 09:00 in Paris
    settings = culm.Settings(home=tmp_path / "server", schedule_tick=3600)
    async with running_server(settings, clock=clock) as running:
        yield running


async def test_add_list_trigger_runs_pause_resume_rm(server: Server, cli: Cli) -> None:
    added = await cli(
        "schedules", "add", "digest", "Summarize", "--cron", "0 9 * * 1-5",
        "--tz", "Europe/Paris", "-m", "scripted:echo", "--tools", "read", server=server.url,
    )  # fmt: skip
    assert added.code == 0, added.stderr
    first, when, upcoming = added.stdout.splitlines()
    match = re.fullmatch(rf"created schedule ({UUID}) \(digest\)", first)
    assert match, first
    schedule_id = match[1]
    assert when == "  when: at 09:00 on Monday through Friday (Europe/Paris)"
    assert upcoming == ("  next: 2026-11-24 09:00 CET, 2026-11-25 09:00 CET, 2026-11-26 09:00 CET")

    listed = await cli("schedules", "list", server=server.url)
    assert listed.code == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["SCHEDULE", "NAME", "STATE", "NEXT", "FIRE", "WHEN"]
    assert row.split()[:3] == [schedule_id, "digest", "on"]
    assert "2026-11-24 09:00 CET" in row
    assert row.endswith("at 09:00 on Monday through Friday (Europe/Paris)")
    as_json = await cli("schedules", "list", "--json", server=server.url)
    [item] = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert item["trigger"] == {"type": "cron", "expr": "0 9 * * 1-5"}

    fired = await cli("schedules", "trigger", schedule_id, server=server.url)
    assert fired.code == 0, fired.stderr
    assert re.fullmatch(rf"fired schedule {schedule_id}: running, run {UUID}\n", fired.stdout)
    run_id = fired.stdout.split()[-1]
    await server.engine.wait(run_id, timeout=10)
    await _settled(server, schedule_id)
    runs = await cli("schedules", "runs", schedule_id, server=server.url)
    assert runs.code == 0, runs.stderr
    header, row = runs.stdout.splitlines()
    assert header.split() == ["SCHEDULED", "FOR", "STATUS", "RUN", "LAG", "COMPLETED"]
    assert row.startswith("2026-11-23 09:00:00 CET")
    assert "success (now)" in row and run_id in row and "0.0s" in row

    paused = await cli("schedules", "pause", schedule_id, server=server.url)
    assert paused.stdout == f"paused schedule {schedule_id}\n"
    assert not (await server.engine.schedules.get(schedule_id)).enabled
    resumed = await cli("schedules", "resume", schedule_id, server=server.url)
    assert resumed.stdout.splitlines()[0] == f"resumed schedule {schedule_id}"
    assert "next: 2026-11-24 09:00 CET" in resumed.stdout
    removed = await cli("schedules", "rm", schedule_id, server=server.url)
    assert removed.stdout == f"deleted schedule {schedule_id}\n"
    assert await server.engine.schedules.list() == []


async def _settled(server: Server, schedule_id: str) -> None:
    async with asyncio.timeout(10):
        while any(f.status in ("queued", "running") for f in await _fires(server, schedule_id)):
            await asyncio.sleep(0.02)


async def _fires(server: Server, schedule_id: str) -> list[ScheduleRun]:
    return await server.engine.schedules.runs(schedule_id)


async def test_interval_and_once_read_plainly(server: Server, cli: Cli) -> None:
    every = await cli(
        "schedules", "add", "poll", "Check", "--every", "15m", "--tz", "Asia/Tokyo",
        server=server.url,
    )  # fmt: skip
    assert every.code == 0, every.stderr
    assert "  when: every 15 minutes\n" in every.stdout
    assert "next: 2026-11-23 17:15 JST, 2026-11-23 17:30 JST, 2026-11-23 17:45 JST" in every.stdout
    once = await cli(
        "schedules", "add", "reminder", "Ping", "--at", "2026-12-01T09:00:00",
        "--tz", "America/New_York", server=server.url,
    )  # fmt: skip
    assert once.code == 0, once.stderr
    assert "when: once at 2026-12-01 09:00:00 (America/New_York)" in once.stdout
    assert "next: 2026-12-01 09:00 EST\n" in once.stdout


async def test_mistakes_are_one_line_and_exit_2(server: Server, cli: Cli) -> None:
    bad_cron = await cli("schedules", "add", "x", "hi", "--cron", "0 9 * *", server=server.url)
    assert bad_cron.code == 2
    assert bad_cron.stderr_lines == [
        "error: trigger.expr: expected 5 fields (minute hour day-of-month month day-of-week), "
        "got 4 in '0 9 * *'"
    ]
    bad_zone = await cli(
        "schedules", "add", "x", "hi", "--cron", "0 9 * * *", "--tz", "Moon/Base",
        server=server.url,
    )  # fmt: skip
    assert bad_zone.code == 2 and bad_zone.stderr.startswith("error: timezone: unknown time zone")
    unknown = await cli("schedules", "runs", "nope", server=server.url)
    assert unknown.code == 2 and unknown.stderr_lines == ["error: schedule 'nope' not found"]
    both = await cli(
        "schedules", "add", "x", "hi", "--cron", "* * * * *", "--every", "5", server=server.url
    )
    assert both.code == 2 and "exactly one of --cron, --every or --at" in both.stderr


@pytest.mark.parametrize(
    ("text", "value"), [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400)]
)
def test_durations(text: str, value: int) -> None:
    assert seconds(text) == value
    assert trigger_of(None, text, None) == {"type": "interval", "every_seconds": value}


@pytest.mark.parametrize("text", ["", "0", "5w", "m", "-5", "1.5h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(UserError, match="--every"):
        seconds(text)
