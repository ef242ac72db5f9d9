"""``culm metrics`` end to end: the real command in a subprocess against a real server."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import culm
from tests.api.conftest import Server, running_server
from tests.cli.conftest import TIMEOUT, Result, clean_env, culm_command, run_culm

SCRIPT = {
    "turns": [
        [{"tool_call": {"name": "list_dir", "arguments": {}}}, {"usage": {"prompt_tokens": 1000, "completion_tokens": 70}}],
        [{"text": "done"}, {"usage": {"prompt_tokens": 1300, "completion_tokens": 50}}],
    ]
}  # fmt: skip


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    # USD per million tokens: a run costs (2,300 x 2 + 120 x 10) / 1e6 = $0.0058.
    price = {"scripted:metered": {"price": {"input": 2.0, "output": 10.0}}}
    async with running_server(culm.Settings(home=tmp_path / "server", models=price)) as running:
        running.engine.scripts.register("metered", SCRIPT)
        for _ in range(2):
            run = await running.engine.run("go", model="scripted:metered", tools=["read"])
            await running.engine.wait(run.run_id, timeout=10)
        await running.engine.metrics.flush()
        yield running


async def metrics(server: Server, home: Path, *args: str) -> Result:
    return await run_culm(home, "metrics", *args, "--server", server.url)


async def test_the_summary_table(server: Server, tmp_path: Path) -> None:
    result = await metrics(server, tmp_path / "cli")
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["METRIC", "VALUE"]
    table = {line[:34].strip(): line[34:].strip() for line in lines[1:]}
    assert table["runs"] == "2"
    assert table["rounds"] == "4 (0 failed, 0 partial)"
    assert table["tool calls"] == "2 (0 failed, 0 cancelled)"
    assert table["tokens: prompt"] == "4,600"
    assert table["tokens: total"] == "4,840"
    assert table["cost (USD)"] == "0.01"  # $0.0116


async def test_by_model_tool_and_day(server: Server, tmp_path: Path) -> None:
    home = tmp_path / "cli"
    by_model = await metrics(server, home, "--by", "model")
    assert by_model.stdout.splitlines()[0].split()[:4] == ["MODEL", "RUNS", "ROUNDS", "FAILED"]
    assert by_model.stdout.splitlines()[1].split()[:5] == [
        "scripted:metered",
        "2",
        "4",
        "0",
        "4,600",
    ]
    header = by_model.stdout.splitlines()[0].split()
    assert by_model.stdout.splitlines()[1].split()[header.index("COST_USD")] == "0.01"
    by_tool = await metrics(server, home, "--by", "tool")
    assert by_tool.stdout.splitlines()[1].split()[:4] == ["list_dir", "2", "0", "0"]
    by_day = await metrics(server, home, "--by", "day", "--days", "30")
    rows = by_day.stdout.splitlines()[1:]
    assert len(rows) == 1  # the days without activity are left out (29 rows of zeros before)
    assert rows[0].split()[1:4] == ["2", "4", "2"]  # today: runs, rounds, tool calls


async def test_json_lines(server: Server, tmp_path: Path) -> None:
    home = tmp_path / "cli"
    summary = await metrics(server, home, "--json")
    (line,) = summary.stdout.splitlines()
    assert json.loads(line)["tokens"]["completion_tokens"] == 240
    assert json.loads(line)["cost_usd"] == pytest.approx(0.0116)
    days = await metrics(server, home, "--by", "day", "--days", "7", "--json")
    periods = [json.loads(line) for line in days.stdout.splitlines()]
    assert len(periods) == 7 and sum(p["rounds"] for p in periods) == 4


async def test_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    home = tmp_path / "cli"
    home.mkdir()
    done = subprocess.run(
        culm_command("metrics", "--server", "http://127.0.0.1:9"),
        env=clean_env(home),
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 2
    assert "cannot reach the culm server" in done.stderr.decode()


async def test_by_day_with_no_activity_says_so(tmp_path: Path) -> None:
    async with running_server(culm.Settings(home=tmp_path / "empty")) as empty:
        result = await metrics(empty, tmp_path / "cli", "--by", "day")
    assert (result.code, result.stdout) == (0, "")
    assert result.stderr.strip() == "no metrics in this range"


def test_flags_take_no_value_in_help(tmp_path: Path) -> None:
    """A flag is shown as ``--json``, not ``--json <bool>`` (typer's rich help did that)."""
    for command in (["metrics"], ["runs"], ["run"], ["show"], ["tail"], ["mcp", "list"]):
        done = subprocess.run(
            culm_command(*command, "--help"),
            env=clean_env(tmp_path),
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=TIMEOUT,
            check=True,
        )
        text = done.stdout.decode()
        assert "--json" in text and "<bool>" not in text, text


async def test_a_cancelled_run_counts_its_round_and_tool_call_as_cancelled(tmp_path: Path) -> None:
    """Not as failures, and the tool call the cancel ended is counted."""
    script = {"turns": [[{"tool_call": {"name": "bash", "arguments": {"command": "sleep 30"}}}]]}
    async with running_server(culm.Settings(home=tmp_path / "server")) as server:
        engine = server.engine
        engine.scripts.register("sleeper", script)
        run = await engine.run("go", model="scripted:sleeper", tools=["bash"])
        async for event in engine.subscribe(run.run_id):
            if event.type == "tool_start":
                await engine.cancel(run.run_id, wait=True, timeout=20)
                break
        streaming = await engine.run("count", model="scripted:slow")  # cut in its model call
        async for event in engine.subscribe(streaming.run_id):
            if event.type == "token":
                await engine.cancel(streaming.run_id, wait=True, timeout=20)
                break
        await engine.metrics.flush()
        summary = await metrics(server, tmp_path / "cli")
        by_tool = await metrics(server, tmp_path / "cli", "--by", "tool")
    assert summary.code == 0, summary.stderr
    table = {line[:34].strip(): line[34:].strip() for line in summary.stdout.splitlines()[1:]}
    assert table["completed / failed / cancelled"] == "0 / 0 / 2"
    assert table["rounds"] == "2 (0 failed, 1 partial)"
    assert table["tool calls"] == "1 (0 failed, 1 cancelled)"
    assert by_tool.stdout.splitlines()[1].split()[:4] == ["bash", "1", "0", "1"]
