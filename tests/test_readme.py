"""The README's quick start and make targets are what the repository really has: its test
command appears verbatim in .ci/run, and every ``make`` target it names exists; its Python and
MCP examples work as written."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import culm
from culm.domain.events import ToolComplete

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELLS = {"sh", "bash", "shell", "console"}


def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def quick_start_commands() -> list[str]:
    """The command lines of the README's first fenced shell block."""
    for language, body in FENCE.findall(readme()):
        if language in SHELLS:
            lines = (line.strip().removeprefix("$ ") for line in body.splitlines())
            return [line for line in lines if line and not line.startswith("#")]
    raise AssertionError("README.md has no fenced shell block")


def test_quick_start_is_install_and_run_then_test() -> None:
    install, test = quick_start_commands()
    assert "-c requirements/constraints.txt" in install
    assert install.endswith("culm serve")  # the main job, on the embedded default
    assert "-c requirements/constraints.txt" in test
    assert re.search(r"&& \.venv/bin/pytest( -n \d+)?$", test), test  # the whole suite


def test_ci_runs_the_readme_test_command() -> None:
    _, test = quick_start_commands()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test in ci, ".ci/run must run the README's test command verbatim"
    assert "set -euo pipefail" in ci


def test_make_targets_named_in_the_readme_exist() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    defined = set(re.findall(r"^([a-z][\w-]*):", makefile, re.MULTILINE))
    named = set(re.findall(r"`make ([a-z][\w-]*)`", readme()))
    assert named, "the README names no make targets"
    assert named <= defined, f"not in the Makefile: {sorted(named - defined)}"


def fenced(language: str) -> list[str]:
    """The README's fenced blocks in ``language``, indented ones (in a list item) included."""
    blocks = re.findall(rf"^( *)```{language}\n(.*?)^\1```", readme(), re.MULTILINE | re.DOTALL)
    return [textwrap.dedent(body) for _, body in blocks]


async def test_the_python_example_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It runs as written against a fresh CULM_HOME, and no schedule is left that every later
    ``culm serve`` would fire."""
    example = fenced("python")[1]  # the first is the proxy's client, the last an app
    home = tmp_path / "home"
    monkeypatch.setenv("CULM_HOME", str(home))
    script = tmp_path / "example.py"
    script.write_text(example)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 40)
    assert process.returncode == 0, stderr.decode()
    assert "completed" in stdout.decode()
    async with culm.Engine(culm.Settings(home=home, scheduler=False)) as engine:
        assert await engine.schedules.list() == []


async def test_the_mcp_example_works_from_culms_virtualenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``[mcp_servers.time]`` as written, with culm's virtualenv not on PATH (culm started as
    ``.venv/bin/culm``): its bare ``command`` is found beside culm's Python."""
    (config,) = fenced("toml")
    time_server = tomllib.loads(config)["mcp_servers"]["time"]
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert shutil.which(time_server["command"]) is None
    settings = culm.Settings(home=tmp_path / "home", mcp_servers={"time": time_server})
    script = {
        "turns": [
            [{"tool_call": {"name": "mcp__time__get_current_time", "arguments": {"timezone": "UTC"}}}],
            [{"text": "done"}],
        ]
    }  # fmt: skip
    async with culm.Engine(settings) as engine:
        engine.scripts.register("clock", script)
        run = await engine.run("what time is it?", model="scripted:clock", tools=["mcp__time__*"])
        events = [event async for event in engine.subscribe(run.run_id)]
    (result,) = [event for event in events if isinstance(event, ToolComplete)]
    assert '"timezone": "UTC"' in result.result
    assert events[-1].type == "complete"


async def test_the_app_example_loads_and_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's app, as written, loaded by module:attr: its typed tool answers the agent."""
    (example,) = [block for block in fenced("python") if "app = culm.App()" in block]
    (tmp_path / "myagents.py").write_text(example)
    monkeypatch.syspath_prepend(str(tmp_path))
    script = {
        "turns": [
            [{"tool_call": {"name": "convert", "arguments": {"amount": 10, "to": "USD"}}}],
            [{"text": "done"}],
        ]
    }
    try:
        settings = culm.Settings(home=tmp_path / "home", scheduler=False)
        async with culm.Engine(settings, app="myagents:app") as engine:
            engine.scripts.register("books", script)
            [schedule] = await engine.schedules.list()
            run = await engine.run("10 EUR in USD?", agent="accountant", model="scripted:books")
            events = [event async for event in engine.subscribe(run.run_id)]
    finally:
        sys.modules.pop("myagents", None)
    (result,) = [event for event in events if isinstance(event, ToolComplete)]
    assert result.result == '{"USD":11.0}'
    assert schedule.run_config.agent == "accountant"
