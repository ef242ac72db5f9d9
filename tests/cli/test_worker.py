"""``culm worker`` as a real process: its start line, a clean stop on SIGTERM or SIGINT (exit 0),
its row in the ``workers`` table, and the runs it executes for a ``culm serve --no-worker``."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import pytest
import sqlalchemy as sa

from tests.api.conftest import free_port
from tests.cli.conftest import CulmRunner, clean_env, culm_command, restore_sigint

START = re.compile(
    r"culm worker (?P<id>[^\s:]+:(?P<pid>\d+):\w+) on (?P<database>\S+) "
    r"\(concurrency (?P<concurrency>\d+); schedules (?P<schedules>on|off);"
)
STARTUP = 30


@asynccontextmanager
async def culm_worker(
    home: Path, *args: str, env: Mapping[str, str] | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, re.Match[str]]]:
    """A ``culm worker`` process, once it printed its start line (the match of START)."""
    home.mkdir(parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        *culm_command("worker", *args),
        env=clean_env(home, env), cwd=home, preexec_fn=restore_sigint,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        async with asyncio.timeout(STARTUP):
            line = (await process.stderr.readline()).decode()
        started = START.match(line)
        assert started is not None, line
        yield process, started
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _stop(process: asyncio.subprocess.Process, number: signal.Signals) -> tuple[int, str]:
    process.send_signal(number)
    _, stderr = await asyncio.wait_for(process.communicate(), STARTUP)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
async def test_a_worker_says_who_it_is_and_stops_cleanly(
    tmp_path: Path, number: signal.Signals
) -> None:
    home = tmp_path / "home"
    async with culm_worker(home, "--concurrency", "3") as (process, started):
        assert int(started["pid"]) == process.pid
        assert started["concurrency"] == "3"
        assert started["database"] == str(home / "culm.db")
        assert started["schedules"] == "on"
        code, stderr = await _stop(process, number)
    assert code == 0, stderr
    assert f"{number.name}, stopping" in stderr
    assert "Traceback" not in stderr


async def test_concurrency_and_scheduler_come_from_the_settings(tmp_path: Path) -> None:
    env = {"CULM_WORKER_CONCURRENCY": "7", "CULM_SCHEDULER": "false"}
    async with culm_worker(tmp_path / "home", env=env) as (process, started):
        assert (started["concurrency"], started["schedules"]) == ("7", "off")
        code, _ = await _stop(process, signal.SIGTERM)
    assert code == 0


async def test_the_database_password_is_not_printed(tmp_path: Path, postgres_url: str) -> None:
    # The local server trusts its clients: the password is ignored, but must not be shown.
    url = sa.make_url(postgres_url).set(password="s3cret-pass")
    env = {"CULM_DATABASE_URL": url.render_as_string(hide_password=False)}
    async with culm_worker(tmp_path / "home", env=env) as (process, started):
        assert started["database"] == url.render_as_string(hide_password=True)
        code, stderr = await _stop(process, signal.SIGTERM)
    assert code == 0, stderr
    assert "s3cret-pass" not in stderr


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_an_invalid_concurrency_is_a_usage_error(culm: CulmRunner, value: str) -> None:
    result = culm("worker", "--concurrency", value)
    assert result.code == 2
    assert "--concurrency" in result.stderr


def test_an_invalid_concurrency_setting_names_it(culm: CulmRunner) -> None:
    result = culm("worker", env={"CULM_WORKER_CONCURRENCY": "0"})
    assert result.code == 2
    assert result.stderr_lines[-1].startswith("error:")
    assert "worker_concurrency" in result.stderr.lower()


@asynccontextmanager
async def culm_api(home: Path, env: Mapping[str, str]) -> AsyncIterator[str]:
    """A ``culm serve --no-worker`` process; its URL once /health answers."""
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        *culm_command("serve", "--no-worker", "--port", str(port)),
        env=clean_env(home, env), cwd=home, preexec_fn=restore_sigint,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        assert process.stderr is not None
        async with asyncio.timeout(STARTUP):
            line = (await process.stderr.readline()).decode()
        assert line.startswith(f"culm serving the API only on {url} "), line
        async with httpx2.AsyncClient(base_url=url) as client, asyncio.timeout(STARTUP):
            while True:
                try:
                    if (await client.get("/health")).status_code == 200:
                        break
                except httpx2.TransportError:
                    await asyncio.sleep(0.05)
        yield url
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(STARTUP):
                await process.communicate()


@pytest.mark.timeout(120)
async def test_a_worker_executes_the_runs_an_api_process_reserved(
    tmp_path: Path, postgres_url: str
) -> None:
    env = {"CULM_DATABASE_URL": postgres_url}
    async with (
        culm_api(tmp_path / "api", env) as url,
        httpx2.AsyncClient(base_url=url, timeout=30) as client,
    ):
        body = {"message": "go", "model": "scripted:demo", "tools": ["read"]}
        run = (await client.post("/v1/runs", json=body)).json()
        queue = (await client.get("/v1/workers")).json()["queue"]
        assert (queue["ready"], queue["running"]) == (1, 0)  # nobody executes it yet
        async with culm_worker(tmp_path / "worker", env=env) as (worker, started):
            done = await client.get(f"/v1/runs/{run['run_id']}/wait", params={"timeout": 30})
            assert done.json()["status"] == "completed"
            [row] = (await client.get("/v1/workers")).json()["workers"]
            assert (row["worker_id"], row["kind"], row["alive"]) == (started["id"], "worker", True)
            code, stderr = await _stop(worker, signal.SIGTERM)
        assert code == 0, stderr
        assert (await client.get("/v1/workers")).json()["workers"] == []
        everyone = (await client.get("/v1/workers", params={"include_stopped": "true"})).json()
        [stopped] = everyone["workers"]
        assert stopped["worker_id"] == started["id"] and stopped["stopped_at"] is not None
        assert stopped["claims"] == 1


def test_a_database_it_cannot_reach_is_one_line(culm: CulmRunner) -> None:
    url = f"postgresql+asyncpg://culm:s3cret-pass@127.0.0.1:{free_port()}/culm"  # nothing there
    result = culm("worker", env={"CULM_DATABASE_URL": url})
    assert result.code == 2
    [line] = result.stderr_lines
    assert line.startswith("error: CULM_DATABASE_URL: cannot use postgresql+asyncpg://culm:***@")
    assert "s3cret-pass" not in result.stderr
