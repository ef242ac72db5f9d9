"""Everything a bash command starts ends with the call: on cancel, on timeout, when bash exits,
and when culm dies (kill -9) — ``setsid`` and double-forked descendants included, with and
without the bubblewrap sandbox. And the command sees only the minimal environment."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from culm.errors import ToolTimeoutError
from culm.settings import SandboxMode
from culm.tools.base import ToolContext
from culm.tools.bash import BashTool
from culm.tools.sandbox import NO_SANDBOX, Sandbox, choose_sandbox
from tests.processes import (
    escapees_started,
    escaping_command,
    new_marker,
    nothing_left,
    require_bwrap,
    until,
    wait_sync,
)

from .conftest import Recorder


@pytest.fixture(params=["none", "bwrap"])
def sandbox(request: pytest.FixtureRequest) -> Sandbox:
    if request.param == "none":
        return NO_SANDBOX
    require_bwrap()
    return choose_sandbox(SandboxMode.BWRAP)


async def test_cancel_ends_setsid_and_double_forked_descendants(
    ctx: ToolContext, recorder: Recorder, sandbox: Sandbox
) -> None:
    marker = new_marker()
    task = asyncio.create_task(
        BashTool(sandbox=sandbox).run({"command": escaping_command(marker)}, ctx)
    )
    await until(lambda: "ready" in recorder.text, what="the command started")
    await until(lambda: escapees_started(marker), what="the escapees started")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert nothing_left(marker)


async def test_timeout_ends_setsid_and_double_forked_descendants(
    ctx: ToolContext, sandbox: Sandbox
) -> None:
    marker = new_marker()
    with pytest.raises(ToolTimeoutError):
        await BashTool(sandbox=sandbox).run(
            {"command": escaping_command(marker), "timeout": 2}, ctx
        )
    assert nothing_left(marker)


async def test_descendants_end_when_the_command_ends(ctx: ToolContext, sandbox: Sandbox) -> None:
    marker = new_marker()
    result = await BashTool(sandbox=sandbox).run(
        {"command": escaping_command(marker, wait="true")}, ctx
    )
    assert result == "ready\nexit code: 0"
    assert nothing_left(marker)


KILLED_HOST = """
import asyncio, sys
from pathlib import Path
from culm.settings import SandboxMode
from culm.tools.base import ToolContext
from culm.tools.bash import BashTool
from culm.tools.sandbox import NO_SANDBOX, choose_sandbox

async def main() -> None:
    mode, workspace, command = sys.argv[1:]
    sandbox = NO_SANDBOX if mode == "none" else choose_sandbox(SandboxMode.BWRAP)
    ctx = ToolContext(workspace=Path(workspace), tool_call_id="c", emit_output=lambda t: None,
                      timeout=300)
    await BashTool(sandbox=sandbox).run({"command": command}, ctx)

asyncio.run(main())
"""


def test_kill_9_of_culm_ends_everything_the_command_started(
    workspace: Path, sandbox: Sandbox
) -> None:
    marker = new_marker()
    host = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(KILLED_HOST), sandbox.kind, str(workspace)]
        + [escaping_command(marker)],
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_sync(lambda: escapees_started(marker), what="the escapees started")
        host.send_signal(signal.SIGKILL)
        host.wait(timeout=10)
        wait_sync(lambda: nothing_left(marker), what="every process of the command gone")
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()


async def test_the_command_gets_a_minimal_environment(
    workspace: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, sandbox: Sandbox
) -> None:
    secrets = {
        "OPENAI_API_KEY": "sk-openai-secret",
        "ANTHROPIC_API_KEY": "sk-ant-secret",
        "CULM_API_KEY": "culm-secret",
        "CULM_DATABASE_URL": "postgresql://user:secret@db/culm",
    }
    for name, value in {**secrets, "SHARED_TOKEN": "passed-on", "LANG": "C.UTF-8"}.items():
        monkeypatch.setenv(name, value)
    ctx = ToolContext(
        workspace=workspace,
        tool_call_id="c",
        emit_output=recorder,
        timeout=30,
        run_id="0b7e8a3c-5c2e-4d1e-9f6a-1234567890ab",
        session_id="s-1",
    )
    tool = BashTool(sandbox=sandbox, env_passthrough=["SHARED_TOKEN"])
    command = f"{sys.executable} -c 'import json, os; print(json.dumps(dict(os.environ)))'"
    result = await tool.run({"command": command}, ctx)
    seen = json.loads(result.splitlines()[0])
    assert not set(secrets) & set(seen)
    assert not any(value in result for value in secrets.values())
    assert seen["SHARED_TOKEN"] == "passed-on"
    assert seen["LANG"] == "C.UTF-8"
    assert seen["PATH"] == os.environ["PATH"]
    assert seen["CULM_RUN_ID"] == ctx.run_id
    assert seen["CULM_SESSION_ID"] == "s-1"
    assert seen["TRACEPARENT"].startswith("00-0b7e8a3c5c2e4d1e9f6a1234567890ab-")
    assert seen["PWD"] == str(workspace.resolve())
    allowed = {"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME", "TERM"}
    expected = allowed | {"SHARED_TOKEN", "CULM_RUN_ID", "CULM_SESSION_ID", "TRACEPARENT", "PWD"}
    # What the shell adds itself (SHLVL, _) is not culm's environment.
    assert set(seen) - {"SHLVL", "_", "OLDPWD"} <= expected
