"""The bash tool under bubblewrap (real bwrap): escape attempts from inside the workspace."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from culm.errors import ConfigError
from culm.settings import SandboxMode, Settings
from culm.tools.base import ToolContext
from culm.tools.bash import BashTool
from culm.tools.sandbox import Sandbox, choose_sandbox, sandbox_from
from tests.processes import require_bwrap


@pytest.fixture
def confined() -> BashTool:
    require_bwrap()
    return BashTool(sandbox=choose_sandbox(SandboxMode.BWRAP))


async def run(tool: BashTool, ctx: ToolContext, command: str) -> str:
    return await tool.run({"command": command}, ctx)


async def test_host_files_outside_the_allowed_directories_are_not_there(
    confined: BashTool,
    ctx: ToolContext,
    outside: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmp_path / "culm-home"
    home.mkdir()
    (home / "culm.db").write_text("the database")
    user_home = tmp_path / "user-home"
    user_home.mkdir()
    (user_home / ".netrc").write_text("machine x password secret")
    monkeypatch.setenv("HOME", str(user_home))
    for target in (outside / "secret.txt", home / "culm.db", user_home / ".netrc"):
        result = await run(confined, ctx, f"ls -d {target} || echo absent")
        assert "absent" in result, target
    result = await run(confined, ctx, "ls /root /home /srv /var /run 2>&1; echo; ls /")
    listed = result.rsplit("\n\n", 1)[1].split()
    assert not {"home", "srv", "var", "run", "mnt", "boot"} & set(listed)


async def test_secrets_in_etc_are_hidden_and_the_system_is_read_only(
    confined: BashTool, ctx: ToolContext
) -> None:
    if os.path.exists("/etc/shadow"):
        result = await run(confined, ctx, "cat /etc/shadow; echo; wc -c < /etc/shadow")
        assert "root:" not in result
    result = await run(confined, ctx, "cat /etc/passwd | head -1")
    assert result.startswith("root:")  # the rest of /etc is there
    for path in ("/etc/culm-escape", "/usr/culm-escape"):
        result = await run(confined, ctx, f"echo x > {path}; echo code=$?")
        assert "code=1" in result
        assert not os.path.exists(path)


async def test_writes_stay_in_the_workspace(
    confined: BashTool, ctx: ToolContext, workspace: Path, outside: Path
) -> None:
    result = await run(
        confined,
        ctx,
        f"echo kept > inside.txt; echo x > {outside}/new.txt; echo x > /tmp/private.txt; ls /tmp",
    )
    assert (workspace / "inside.txt").read_text() == "kept\n"
    assert not (outside / "new.txt").exists()
    assert "private.txt" in result
    assert not Path("/tmp/private.txt").exists()  # the command's /tmp is its own


async def test_host_processes_are_not_visible(confined: BashTool, ctx: ToolContext) -> None:
    result = await run(confined, ctx, "ls /proc | grep -c '^[0-9]'; echo $$")
    count, pid = result.splitlines()[:2]
    assert int(count) <= 4  # bwrap's init, bash, ls, grep
    assert str(os.getpid()) not in result.split("exit code")[0].split()
    assert int(pid) < 10


async def test_python_of_culm_works_and_home_is_private(
    confined: BashTool, ctx: ToolContext
) -> None:
    result = await run(confined, ctx, f"{sys.executable} -c 'print(6 * 7)'; echo $HOME")
    assert result == "42\n/tmp\nexit code: 0"


async def test_the_network_can_be_turned_off(ctx: ToolContext) -> None:
    require_bwrap()
    offline = BashTool(sandbox=choose_sandbox(SandboxMode.BWRAP, network=False))
    online = BashTool(sandbox=choose_sandbox(SandboxMode.BWRAP, network=True))
    command = "ls /sys/class/net 2>/dev/null || cat /proc/net/dev | tail -n +3 | cut -d: -f1"
    assert (await run(offline, ctx, command)).split()[:-3] == ["lo"]
    assert len((await run(online, ctx, command)).split()[:-3]) >= 1


def test_the_setting_chooses_the_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    assert sandbox_from(Settings(bash_sandbox=SandboxMode.NONE)).kind == "none"
    require_bwrap()
    assert sandbox_from(Settings(bash_sandbox=SandboxMode.AUTO)).kind == "bwrap"
    monkeypatch.setenv("PATH", "/nonexistent")
    fallback = sandbox_from(Settings(bash_sandbox=SandboxMode.AUTO))
    assert fallback == Sandbox(kind="none")
    assert "bwrap is not installed" in fallback.reason
    with pytest.raises(ConfigError, match="CULM_BASH_SANDBOX=bwrap: bwrap is not installed"):
        sandbox_from(Settings(bash_sandbox=SandboxMode.BWRAP))
