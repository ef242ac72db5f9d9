"""``culm run`` end to end: the real command in a subprocess, on the scripted models."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import IO

import pytest

from culm import Engine, RunStatus, Settings, event_from_json
from tests.cli.conftest import TIMEOUT, CulmRunner, clean_env, culm_command, restore_sigint

SUMMARY = re.compile(
    r"^(completed|cancelled|error) · \d+ rounds? · [\d,]+ tokens \([\d,]+ in / [\d,]+ out\)"
    r" · \d+\.\d s · run [0-9a-f-]{36}$"
)


def test_demo_run_streams_the_answer_and_shows_the_tools(culm: CulmRunner, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    (workspace / "docs").mkdir(parents=True)
    (workspace / "notes.txt").write_text("hello")
    result = culm(
        "run", "What is in the workspace?", "--tools", "read", "--workspace", str(workspace)
    )

    assert result.code == 0, result.stderr
    assert result.stdout == (
        "Let me look at the workspace.\n"
        "Done: the listing above shows what the workspace holds "
        "(this answer comes from the scripted demo model).\n"
    )
    lines = result.stderr_lines
    assert "The user asked about the workspace. I will list it first." in lines
    start = lines.index('▸ list_dir {"path": "."} running…')
    assert re.fullmatch(r"✓ list_dir \d+ ms", lines[start + 1])
    # The answer speaks of "the listing above": it is there, under the tool's line.
    assert lines[start + 2 : start + 4] == ["    docs/", "    notes.txt (5 bytes)"]
    assert SUMMARY.match(lines[-1]) and lines[-1].startswith("completed · 2 rounds · ")
    assert "\x1b[" not in result.stdout + result.stderr


def test_json_prints_every_event_as_one_line(culm: CulmRunner) -> None:
    result = culm("run", "hi", "--tools", "read", "--json")

    assert result.code == 0, result.stderr
    events = [event_from_json(line) for line in result.stdout.splitlines()]
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    assert events[0].type == "execution_started"
    assert events[-1].type == "complete"
    assert {event.run_id for event in events} == {events[0].run_id}
    assert {"tool_start", "tool_complete", "token"} <= {event.type for event in events}
    assert result.stderr == ""


def test_engine_logs_stay_off_stdout(culm: CulmRunner, home: Path) -> None:
    scripts = home / "scripts"
    scripts.mkdir()
    flaky = [{"error": {"status": 429, "message": "slow down", "retry_after": 0}, "times": 1}]
    (scripts / "flaky.json").write_text(json.dumps({"turns": [[*flaky, {"text": "ok"}]]}))

    result = culm("run", "hi", "-m", "scripted:flaky", "--json")

    assert result.code == 0, result.stderr
    events = [event_from_json(line) for line in result.stdout.splitlines()]
    assert events[-1].type == "complete"
    assert "retrying" in result.stderr


def test_echo_model_answers_with_the_prompt(culm: CulmRunner) -> None:
    result = culm("run", "hello culm", "-m", "scripted:echo", "--system", "Be brief.")

    assert result.code == 0, result.stderr
    assert result.stdout == "You said: hello culm\n"
    assert SUMMARY.match(result.stderr_lines[-1])


def test_no_color_wins_over_a_forced_terminal(culm: CulmRunner) -> None:
    forced = culm("run", "hi", "-m", "scripted:echo", env={"FORCE_COLOR": "1"})
    plain = culm("run", "hi", "-m", "scripted:echo", env={"FORCE_COLOR": "1", "NO_COLOR": "1"})

    assert "\x1b[" in forced.stderr
    assert "\x1b[" not in plain.stderr
    assert forced.stdout == plain.stdout == "You said: hi\n"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["-m", "foo:bar"], "'foo'"),
        (["-m", "gpt-4o"], "provider:model"),
        (["-m", "openai:gpt-4o"], "OPENAI_API_KEY"),
        (["-m", "scripted:nope"], "'nope'"),
        (["--tools", "nope"], "'nope'"),
        (["--tools", "read,nope"], "'nope'"),
        (["--workspace", "does-not-exist"], "does-not-exist"),
    ],
    ids=[
        "unknown-provider",
        "no-colon",
        "missing-api-key",
        "unknown-script",
        "unknown-tool",
        "unknown-tool-in-list",
        "missing-workspace",
    ],
)
def test_user_mistakes_get_one_line_and_exit_2(
    culm: CulmRunner, args: list[str], named: str
) -> None:
    result = culm("run", "hi", *args)

    assert result.code == 2
    assert len(result.stderr_lines) == 1, result.stderr
    assert result.stderr_lines[0].startswith("error: ")
    assert named in result.stderr_lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("env", "prompt", "named"),
    [
        ({"CULM_MAX_ROUNDS": "0"}, "hi", "CULM_MAX_ROUNDS"),
        ({}, "   ", "prompt is empty"),
    ],
    ids=["invalid-setting", "empty-prompt"],
)
def test_bad_settings_and_input_are_user_mistakes(
    culm: CulmRunner, env: dict[str, str], prompt: str, named: str
) -> None:
    result = culm("run", prompt, env=env)

    assert result.code == 2
    assert result.stderr_lines == [result.stderr_lines[0]]
    assert named in result.stderr
    assert "Traceback" not in result.stderr


def test_a_failed_run_exits_1_with_its_message(culm: CulmRunner, home: Path) -> None:
    scripts = home / "scripts"
    scripts.mkdir()
    turn = [{"error": {"status": 401, "message": "bad key"}}]
    (scripts / "fail.json").write_text(json.dumps({"turns": [turn]}))

    result = culm("run", "hi", "-m", "scripted:fail")

    assert result.code == 1
    assert "error: bad key" in result.stderr_lines
    assert SUMMARY.match(result.stderr_lines[-1])
    assert result.stderr_lines[-1].startswith("error · ")
    assert "Traceback" not in result.stderr


def read_until(stream: IO[bytes], marker: bytes, timeout: float) -> bytes:
    """Read ``stream`` as bytes arrive until ``marker`` has been seen."""
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{marker!r} did not appear within {timeout} s (got {seen!r})"
        ready, _, _ = select.select([stream], [], [], remaining)
        if ready:
            chunk = os.read(stream.fileno(), 4096)
            assert chunk, f"the stream closed before {marker!r} appeared (got {seen!r})"
            seen += chunk
    return seen


async def test_ctrl_c_cancels_the_run_and_exits_130(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    process = subprocess.Popen(
        culm_command("run", "count", "-m", "scripted:slow"),
        env=clean_env(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=restore_sigint,
    )
    try:
        assert process.stdout is not None
        read_until(process.stdout, b"tick", TIMEOUT)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 130, stderr
    lines = stderr.decode().strip().splitlines()
    assert "cancelled: cancelled by user (Ctrl-C)" in lines
    assert lines[-1].startswith("cancelled · ")
    assert b"Traceback" not in stderr

    monkeypatch.setenv("CULM_HOME", str(home))
    async with Engine(Settings(home=home)) as engine:
        [run] = await engine.list_runs()
        assert run.status is RunStatus.CANCELLED
        events = [event async for event in engine.subscribe(run.run_id)]
    assert events[-1].type == "cancelled"
