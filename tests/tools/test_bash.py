"""The bash tool with a real bash: live output, caps, timeouts and cancellation leave no process."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psutil
import pytest

from culm.errors import ToolFailure, ToolTimeoutError
from culm.tools.base import ToolContext
from culm.tools.bash import BashTool, kill_deadline
from tests.support import PROMPTLY

from .conftest import Recorder


def is_dead(pid: int) -> bool:
    """Gone, or a zombie waiting for init to reap it (a grandchild is not ours to reap)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def is_reaped(pid: int) -> bool:
    return not psutil.pid_exists(pid)


async def wait_for(condition: object, timeout: float = 5.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def start(
    recorder: Recorder, ctx: ToolContext, command: str
) -> tuple[asyncio.Task[str], int]:
    """Start ``command`` (which must first print ``$$``); return the task and bash's pid."""
    task = asyncio.create_task(BashTool().run({"command": command}, ctx))
    await wait_for(lambda: "\n" in recorder.text)
    return task, int(recorder.text.split()[0])


async def test_output_and_exit_code(ctx: ToolContext) -> None:
    result = await BashTool().run({"command": "echo out; echo err >&2; exit 3"}, ctx)
    assert result == "out\nerr\nexit code: 3"


async def test_runs_in_the_workspace(ctx: ToolContext, workspace: Path) -> None:
    result = await BashTool().run({"command": 'pwd; echo "$PWD"; cat; echo done'}, ctx)
    real = str(workspace.resolve())
    assert result == f"{real}\n{real}\ndone\nexit code: 0"


async def test_no_output(ctx: ToolContext) -> None:
    assert await BashTool().run({"command": "true"}, ctx) == "(no output)\nexit code: 0"


async def test_output_streams_live_in_chunks(ctx: ToolContext, recorder: Recorder) -> None:
    command = "for i in 1 2 3; do echo $i; sleep 0.2; done"
    task = asyncio.create_task(BashTool().run({"command": command}, ctx))
    await wait_for(lambda: recorder.chunks)
    assert not task.done(), "the first output must arrive while the command still runs"
    assert await task == "1\n2\n3\nexit code: 0"
    assert len(recorder.chunks) >= 3
    assert recorder.text == "1\n2\n3\n"


async def test_utf8_split_across_chunks_is_decoded(ctx: ToolContext, recorder: Recorder) -> None:
    result = await BashTool().run({"command": r"printf '\xc3'; sleep 0.2; printf '\xa9\n'"}, ctx)
    assert result == "é\nexit code: 0"
    assert recorder.text == "é\n"


async def test_invalid_utf8_is_replaced(ctx: ToolContext) -> None:
    result = await BashTool().run({"command": r"printf 'a\xffb\n'"}, ctx)
    assert result == "a\ufffdb\nexit code: 0"


async def test_output_cap(ctx: ToolContext, recorder: Recorder) -> None:
    tool = BashTool(output_limit=1024)
    command = "head -c 5000 /dev/zero | tr '\\0' a; echo; echo end"
    result = await tool.run({"command": command}, ctx)
    assert result.startswith(
        "a" * 1024 + "\n[output truncated: showing the first 1024 of 5005 bytes]"
    )
    assert result.endswith("exit code: 0")
    assert "end" not in result
    assert recorder.text.count("[output truncated") == 1
    assert recorder.text.startswith("a" * 1024 + "\n[output truncated after 1024 bytes")


async def test_timeout_kills_the_process_group(ctx: ToolContext) -> None:
    command = "sleep 30 & echo child=$!; sleep 30"
    started = time.monotonic()
    with pytest.raises(ToolTimeoutError, match="timed out after 0.5 seconds") as info:
        await BashTool().run({"command": command, "timeout": 0.5}, ctx)
    assert time.monotonic() - started < 5
    output = str(info.value)
    assert "child=" in output
    child = int(output.split("child=")[1].split()[0])
    assert is_dead(child)


async def test_cancel_kills_everything_promptly(ctx: ToolContext, recorder: Recorder) -> None:
    task, bash_pid = await start(recorder, ctx, "echo $$; sleep 30 & sleep 30")
    await wait_for(lambda: len(psutil.Process(bash_pid).children()) == 2)
    sleeps = [child.pid for child in psutil.Process(bash_pid).children()]
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < PROMPTLY
    assert is_reaped(bash_pid), "bash must be reaped, not left a zombie"
    assert all(is_dead(pid) for pid in sleeps)


async def test_cancel_kills_a_command_that_ignores_sigterm(
    ctx: ToolContext, recorder: Recorder
) -> None:
    task, bash_pid = await start(recorder, ctx, "echo $$; trap '' TERM; sleep 30; true")
    await wait_for(lambda: psutil.Process(bash_pid).children())
    (sleep,) = psutil.Process(bash_pid).children()
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < PROMPTLY
    assert is_reaped(bash_pid)
    assert is_dead(sleep.pid)


async def test_background_processes_are_stopped_when_the_command_ends(ctx: ToolContext) -> None:
    started = time.monotonic()
    result = await BashTool().run({"command": "sleep 30 & echo $!"}, ctx)
    assert time.monotonic() - started < 5
    assert result.endswith("exit code: 0")
    assert is_dead(int(result.split()[0]))


async def test_bash_killed_by_a_signal(ctx: ToolContext) -> None:
    result = await BashTool().run({"command": "echo before; kill -9 $$"}, ctx)
    assert result == "before\nexit code: -9 (bash was killed by SIGKILL)"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "missing required argument 'command'"),
        ({"command": "  "}, "argument 'command' is empty"),
        ({"command": ["ls"]}, "argument 'command' must be a string, got an array"),
        ({"command": "ls", "timeout": "5"}, "argument 'timeout' must be a number, got a string"),
        ({"command": "ls", "timeout": 0}, "argument 'timeout' must be greater than 0"),
        ({"command": "ls", "cwd": "/"}, "unexpected argument 'cwd'"),
    ],
)
async def test_validates_arguments(
    ctx: ToolContext, arguments: dict[str, object], message: str
) -> None:
    with pytest.raises(ToolFailure, match=message):
        await BashTool().run(arguments, ctx)


async def test_missing_workspace(tmp_path: Path, recorder: Recorder) -> None:
    ctx = ToolContext(
        workspace=tmp_path / "gone", tool_call_id="c", emit_output=recorder, timeout=5
    )
    with pytest.raises(ToolFailure, match="does not exist"):
        await BashTool().run({"command": "true"}, ctx)


def test_kill_deadline_stays_within_the_tool_timeout() -> None:
    assert kill_deadline(None, 120) == 119.5
    assert kill_deadline(5, 120) == 5
    assert kill_deadline(500, 120) == 119.5
    assert kill_deadline(None, 2) == pytest.approx(1.8)
    assert 0 < kill_deadline(None, 0.1) < 0.1


def test_output_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="output_limit"):
        BashTool(output_limit=0)


async def test_a_second_cancel_during_cleanup_still_cleans_up(
    ctx: ToolContext, recorder: Recorder
) -> None:
    task, bash_pid = await start(recorder, ctx, "echo $$; trap '' TERM; sleep 30; true")
    await wait_for(lambda: psutil.Process(bash_pid).children())
    (sleep,) = psutil.Process(bash_pid).children()
    task.cancel()
    await asyncio.sleep(0.05)  # inside the SIGTERM grace
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert is_reaped(bash_pid)
    assert is_dead(sleep.pid)


async def test_callers_timeout_kills_everything(ctx: ToolContext, recorder: Recorder) -> None:
    """The loop enforces ``ctx.timeout`` with ``asyncio.timeout`` around the call."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await BashTool().run({"command": "echo $$; sleep 30; true"}, ctx)
    bash_pid = int(recorder.text.split()[0])
    assert is_reaped(bash_pid)
