"""Running the real ``culm`` command in a subprocess, on a fresh ``CULM_HOME``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

# Variables that would change what the CLI does: culm's settings, provider credentials, colour.
_DROPPED_PREFIXES = ("CULM_", "OPENAI_", "ANTHROPIC_")
_DROPPED = {"NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS"}
TIMEOUT = 45


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return self.stderr.strip().splitlines()


def clean_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_DROPPED_PREFIXES) and key not in _DROPPED
    }
    return {**env, "CULM_HOME": str(home), "PYTHONIOENCODING": "utf-8", **(extra or {})}


def culm_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "culm", *args]


def restore_sigint() -> None:
    """In the child: take SIGINT's default even if the test runner's shell ignores it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def run_culm(home: Path, *args: str, env: Mapping[str, str] | None = None) -> Result:
    """The real ``culm`` in a subprocess on ``home`` (made if missing), run to its end while the
    event loop keeps serving; what it printed."""
    home.mkdir(parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        *culm_command(*args),
        env=clean_env(home, env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=home,
        preexec_fn=restore_sigint,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT)
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


CulmRunner = Callable[..., Result]


@pytest.fixture
def culm(home: Path) -> CulmRunner:
    """``culm("run", "hi", env={...})``: run the CLI to its end and return what it printed."""

    def run(*args: str, env: Mapping[str, str] | None = None) -> Result:
        done = subprocess.run(
            culm_command(*args),
            env=clean_env(home, env),
            capture_output=True,
            stdin=subprocess.DEVNULL,
            cwd=home.parent,
            timeout=TIMEOUT,
            check=False,
        )
        return Result(done.returncode, done.stdout.decode(), done.stderr.decode())

    return run
