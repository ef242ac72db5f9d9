"""People in the loop on the command line: ``culm run`` asks on a terminal (driven here through
a pseudo-terminal), approves with ``--yes``, denies without a terminal; ``culm input RUN_ID``
answers from another shell; ``culm runs --status waiting`` lists what waits."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import sqlite3
import subprocess
from pathlib import Path

import httpx2
import pytest

from tests.api.test_serve import culm_serve
from tests.cli.conftest import TIMEOUT, clean_env, culm_command, restore_sigint, run_culm

WRITE = {"tool_call": {"name": "write_file", "arguments": {"path": "out.txt", "content": "hi"}}}


def _script(home: Path, name: str, turns: list[list[dict[str, object]]]) -> None:
    (home / "scripts").mkdir(parents=True, exist_ok=True)
    (home / "scripts" / f"{name}.json").write_text(json.dumps({"turns": turns}))


def _workspace(home: Path) -> Path:
    path = home / "ws"
    path.mkdir(exist_ok=True)
    return path


def _run_args(home: Path, *extra: str) -> list[str]:
    return [
        "run", "go", "-m", "scripted:w", "--tools", "write_file",
        "--workspace", str(_workspace(home)), "--require-approval", "write_*", *extra,
    ]  # fmt: skip


def _read_until(fd: int, wanted: bytes, seen: bytearray) -> None:
    while wanted not in seen:
        chunk = os.read(fd, 4096)
        assert chunk, f"the terminal closed before {wanted!r}: {bytes(seen)!r}"
        seen.extend(chunk)


@pytest.mark.backends("sqlite")  # culm run is embedded (its own SQLite under CULM_HOME)
@pytest.mark.parametrize(("typed", "written"), [(b"y\n", "hi"), (b"e\n", "edited")])
def test_culm_run_asks_on_a_terminal(tmp_path: Path, typed: bytes, written: str) -> None:
    home = tmp_path / "home"
    _script(home, "w", [[WRITE], [{"text": "finished"}]])
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        culm_command(*_run_args(home)),
        env=clean_env(home, {"NO_COLOR": "1"}),
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        cwd=home,
    )
    os.close(secondary)
    seen = bytearray()
    try:
        _read_until(primary, b'Allow write_file {"path": "out.txt", "content": "hi"}?', seen)
        _read_until(primary, b"[y]es / [n]o / [e]dit", seen)
        os.write(primary, typed)
        if typed == b"e\n":
            _read_until(primary, b"Arguments as JSON", seen)
            os.write(primary, b'{"path": "out.txt", "content": "edited"}\n')
        _read_until(primary, b"finished", seen)
        assert process.wait(timeout=TIMEOUT) == 0, bytes(seen)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(primary)
    assert (home / "ws" / "out.txt").read_text() == written


@pytest.mark.backends("sqlite")  # culm run is embedded (its own SQLite under CULM_HOME)
async def test_culm_run_without_a_terminal_denies_and_yes_approves(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _script(home, "w", [[WRITE], [{"text": "finished"}]])
    denied = await run_culm(home, *_run_args(home))
    assert denied.code == 0, denied.stderr
    assert "denied write_file: culm run has no terminal to ask on" in denied.stderr
    assert "--yes" in denied.stderr
    assert not (home / "ws" / "out.txt").exists()
    approved = await run_culm(home, *_run_args(home, "--yes"))
    assert approved.code == 0 and "approved write_file (--yes)" in approved.stderr
    assert (home / "ws" / "out.txt").read_text() == "hi"


async def test_culm_input_answers_from_another_shell(tmp_path: Path, database_url: str) -> None:
    home = tmp_path / "home"
    _script(home, "w", [[WRITE], [{"text": "finished"}]])
    env = {"CULM_DATABASE_URL": database_url}
    async with (
        culm_serve(home, **env) as (_, url),
        httpx2.AsyncClient(base_url=url, timeout=30) as client,
    ):
        body = {
            "message": "go",
            "model": "scripted:w",
            "tools": ["write_file"],
            "require_approval": ["write_file"],
        }
        run_id = (await client.post("/v1/runs", json=body)).json()["run_id"]
        async with asyncio.timeout(20):
            while (await client.get(f"/v1/runs/{run_id}")).json()["status"] != "waiting":
                await asyncio.sleep(0.05)
        listed = await run_culm(home, "runs", "--status", "waiting", "--server", url)
        assert run_id in listed.stdout
        no_terminal = await run_culm(home, "input", run_id, "--server", url)
        assert no_terminal.code == 2 and "--approve" in no_terminal.stderr
        answered = await run_culm(home, "input", run_id, "--approve", "--server", url)
        assert answered.code == 0, answered.stderr
        assert "write_file  approved" in answered.stdout
        done = (await client.get(f"/v1/runs/{run_id}/wait", params={"timeout": 20})).json()
        assert done["status"] == "completed"


@pytest.mark.backends("sqlite")  # culm run is embedded (its own SQLite under CULM_HOME)
def test_ctrl_c_at_the_prompt_cancels_the_waiting_run(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _script(home, "w", [[WRITE], [{"text": "finished"}]])
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        culm_command(*_run_args(home)),
        env=clean_env(home, {"NO_COLOR": "1"}),
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        cwd=home,
        preexec_fn=restore_sigint,
    )
    os.close(secondary)
    seen = bytearray()
    try:
        _read_until(primary, b"[y]es / [n]o / [e]dit", seen)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=TIMEOUT) == 130, bytes(seen)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(primary)
    assert not (home / "ws" / "out.txt").exists()
    with sqlite3.connect(home / "culm.db") as db:
        assert db.execute("SELECT status FROM runs").fetchall() == [("cancelled",)]
