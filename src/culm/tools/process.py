"""What every process culm starts for a tool (a ``bash`` command, a stdio MCP server) gets.

- :func:`minimal_environment`: not culm's environment (it holds provider keys, ``CULM_API_KEY``,
  the database URL) but a few harmless variables, plus what the caller names explicitly.
- :func:`reaped`: the command line that runs a command under :mod:`culm.tools.reaper`, so that
  the command and everything it starts (``setsid`` and double-forked daemons too) end when the
  command ends, when culm stops it, and when culm dies, ``kill -9`` included.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME", "TERM")
"""The variables of culm's environment that a command gets without being asked for."""
REAPER = Path(__file__).with_name("reaper.py")


def minimal_environment(
    passthrough: Iterable[str] = (), extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """:data:`INHERITED` and the ``passthrough`` names, as far as culm's environment has them,
    then ``extra`` on top."""
    env = {name: os.environ[name] for name in (*INHERITED, *passthrough) if name in os.environ}
    return {**env, **(extra or {})}


def reaped(command: Sequence[str], *, grace: float) -> list[str]:
    """``command`` run under the reaper: when it ends, or is stopped (SIGTERM to the first
    process), or culm dies, whatever it left is sent SIGTERM, then SIGKILL after ``grace``."""
    return [sys.executable, "-I", "-S", str(REAPER), str(os.getpid()), f"{grace:g}", *command]
