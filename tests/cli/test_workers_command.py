"""``culm workers``: the real command in a subprocess against a real server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import culm
from culm.cli.workers import queue_line, state
from culm.runtime.roles import Role
from tests.api.conftest import free_port, running_server
from tests.cli.conftest import run_culm

HEADERS = ["WORKER", "KIND", "STATE", "RUNS", "CLAIMS", "TAKEOVERS", "FENCED", "HEARTBEAT"]


def _settings(tmp_path: Path) -> culm.Settings:
    return culm.Settings(home=tmp_path / "server", worker_concurrency=6)


async def test_the_table_lists_the_server_itself_and_the_queue(tmp_path: Path) -> None:
    async with running_server(_settings(tmp_path)) as server:
        result = await run_culm(tmp_path / "cli", "workers", "--server", server.url)
    assert result.code == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == HEADERS
    cells = row.split()
    assert cells[:4] == [server.engine.worker_id, "embedded", "alive", "0/6"]
    assert result.stderr_lines == ["queue: 0 pending (0 ready), 0 running"]


async def test_json_is_the_whole_answer(tmp_path: Path) -> None:
    async with running_server(_settings(tmp_path)) as server:
        result = await run_culm(tmp_path / "cli", "workers", "--json", "--server", server.url)
    assert result.code == 0, result.stderr
    [line] = result.stdout.splitlines()
    body = json.loads(line)
    assert [w["worker_id"] for w in body["workers"]] == [server.engine.worker_id]
    assert body["queue"]["pending"] == 0


async def test_stopped_workers_only_with_all(tmp_path: Path) -> None:
    async with running_server(_settings(tmp_path), role=Role.API) as server:
        store = server.engine.store
        await store.register_worker(
            "elsewhere:42:cafe", host="elsewhere", pid=42, boot_id=None, pid_namespace=None,
            kind="worker", concurrency=3,
        )  # fmt: skip
        await store.worker_heartbeat(
            "elsewhere:42:cafe", active_runs=0, claims=1234, takeovers=1, fenced_writes=2
        )
        await store.stop_worker("elsewhere:42:cafe")
        home = tmp_path / "cli"
        current = await run_culm(home, "workers", "--server", server.url)
        everyone = await run_culm(home, "workers", "--all", "--server", server.url)
    assert current.code == 0 and current.stdout == ""
    assert current.stderr_lines[0] == "no workers (start `culm worker`, or a plain `culm serve`)"
    assert everyone.code == 0, everyone.stderr
    cells = everyone.stdout.splitlines()[1].split()
    assert cells[:7] == ["elsewhere:42:cafe", "worker", "stopped", "0/3", "1,234", "1", "2"]


async def test_a_server_that_is_down_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = await run_culm(tmp_path / "cli", "workers", "--server", url)
    assert result.code == 2
    assert result.stderr_lines == [
        f"error: cannot reach the culm server at {url} (is `culm serve` running?)"
    ]


async def test_a_server_with_a_key_asks_for_it(tmp_path: Path) -> None:
    settings = culm.Settings(home=tmp_path / "server", api_key="k")
    async with running_server(settings) as server:
        refused = await run_culm(tmp_path / "cli", "workers", "--server", server.url)
        allowed = await run_culm(
            tmp_path / "cli", "workers", "--server", server.url, env={"CULM_API_KEY": "k"}
        )
    assert refused.code == 2
    assert refused.stderr_lines == ["error: the server needs an API key: set CULM_API_KEY"]
    assert allowed.code == 0, allowed.stderr


@pytest.mark.parametrize(
    ("worker", "expected"),
    [
        ({"alive": True, "stopped_at": None}, "alive"),
        ({"alive": False, "stopped_at": None}, "lost"),
        ({"alive": False, "stopped_at": "2026-01-01T00:00:00+00:00"}, "stopped"),
    ],
)
def test_state_words(worker: dict[str, object], expected: str) -> None:
    assert state(worker) == expected


def test_queue_line_with_and_without_pending_runs() -> None:
    empty = {"pending": 0, "ready": 0, "running": 0, "oldest_pending_age": None}
    assert queue_line(empty) == "queue: 0 pending (0 ready), 0 running"
    busy = {"pending": 1200, "ready": 1000, "running": 64, "oldest_pending_age": 3.26}
    assert (
        queue_line(busy) == "queue: 1,200 pending (1,000 ready), 64 running, oldest pending 3.3 s"
    )
