"""The bash tool: run a shell command in the workspace and stream its output live.

The command runs as ``bash -c`` under :mod:`culm.tools.reaper` (and inside the sandbox, if one is
in force: :mod:`culm.tools.sandbox`), in a new session. Its stdout and stderr share one pipe; what
arrives is decoded as UTF-8 and sent at once through ``ToolContext.emit_output``, and the first
``output_limit`` bytes are kept for the result.

Everything the command starts is the call's: when bash exits, when the timeout passes and when the
call is cancelled, whatever is left of it — ``setsid`` and double-forked daemons included, which
the reaper finds as a child subreaper — gets SIGTERM, then SIGKILL after a short grace, and is
reaped before the call returns. The same happens when culm dies, ``kill -9`` included (the reaper's
parent-death signal). The cleanup runs shielded, so a cancel cannot leave processes or zombies
behind; the cancel is re-raised once it is done.

The command does not see culm's environment (provider keys, ``CULM_API_KEY``, the database URL),
only :func:`culm.tools.process.minimal_environment` — ``PATH``, ``HOME``, ``LANG``, ``TZ`` … and
the names in ``CULM_BASH_ENV_PASSTHROUGH`` — and the run it belongs to: ``CULM_RUN_ID``,
``CULM_SESSION_ID`` and a W3C ``TRACEPARENT`` whose trace-id is the run id. A script that calls
culm's forward proxy with ``x-culm-run-id: $CULM_RUN_ID`` or ``traceparent: $TRACEPARENT`` has its
model calls counted in the run's metrics.
"""

from __future__ import annotations

import asyncio
import codecs
import os
import signal
import subprocess
from collections.abc import Callable, Coroutine, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from culm.domain.trace import traceparent_for
from culm.errors import ToolFailure, ToolTimeoutError
from culm.tools.args import check_fields, get_positive_number, get_str
from culm.tools.base import Tool, ToolContext
from culm.tools.process import minimal_environment, reaped
from culm.tools.sandbox import NO_SANDBOX, Sandbox
from culm.tracing.spans import current_traceparent

DEFAULT_OUTPUT_LIMIT = 64 * 1024
KILL_GRACE = 0.2
"""Seconds between SIGTERM and SIGKILL to the process group."""
REAPER_WAIT = KILL_GRACE + 1.0
"""Seconds the reaper gets to end what is left (SIGTERM, grace, SIGKILL) before its whole group
gets SIGKILL."""
REAP_TIMEOUT = 2.0
"""Seconds to wait for bash to be reaped after SIGKILL (it only takes longer if the kernel is stuck)."""
DRAIN_TIMEOUT = 0.5
"""Seconds to wait for the output pipe to close once the group is gone (a process that left the
group may still hold it open)."""


class BashTool(Tool):
    name = "bash"
    description = (
        "Run a shell command with `bash -c` in the workspace directory. Returns the combined "
        "stdout and stderr followed by `exit code: N`; a non-zero exit code is a normal result. "
        "Each call is a fresh shell (`cd` and variables do not carry over) with empty stdin, so "
        "nothing can be interactive. Very long output is cut. Background processes still running "
        "when the command ends are stopped; on timeout the command and its children are killed."
    )
    parameters = {
        "type": "object",
        "properties": {
            "command": {"type": "string", "description": "The command line to run."},
            "timeout": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": (
                    "Seconds before the command is killed. Defaults to, and cannot exceed, "
                    "the tool time limit."
                ),
            },
        },
        "required": ["command"],
        "additionalProperties": False,
    }

    def __init__(
        self,
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
        *,
        sandbox: Sandbox = NO_SANDBOX,
        env_passthrough: Sequence[str] = (),
    ) -> None:
        if output_limit < 1:
            raise ValueError(f"output_limit must be positive, got {output_limit}")
        self.output_limit = output_limit
        self.sandbox = sandbox
        self.env_passthrough = tuple(env_passthrough)

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        check_fields(arguments, self.parameters)
        command = get_str(arguments, "command")
        if not command.strip():
            raise ToolFailure("argument 'command' is empty")
        deadline = kill_deadline(get_positive_number(arguments, "timeout"), ctx.timeout)
        cwd = ctx.workspace.resolve()
        if not cwd.is_dir():
            raise ToolFailure(f"the workspace directory {cwd} does not exist")
        output = _Output(self.output_limit, ctx.emit_output)
        argv = reaped(self.sandbox.wrap(["bash", "-c", command], cwd), grace=KILL_GRACE)
        transport, protocol = await _spawn(argv, cwd, output, self._environment(ctx, cwd))
        timed_out = False
        try:
            async with asyncio.timeout(deadline):
                await protocol.exited.wait()
        except TimeoutError:
            timed_out = True
        finally:
            await _run_shielded(_end_process_group(transport, protocol))
        output.finish()
        if timed_out:
            raise ToolTimeoutError(
                f"the command timed out after {deadline:g} seconds and was killed; "
                f"output so far:\n{output.text() or '(no output)'}"
            )
        return _result(output.text(), transport.get_returncode())

    def _environment(self, ctx: ToolContext, cwd: Path) -> dict[str, str]:
        env = minimal_environment(self.env_passthrough, _run_environment(ctx))
        if home := self.sandbox.home:
            env["HOME"] = home
        return {**env, "PWD": str(cwd)}


def kill_deadline(requested: float | None, allowed: float) -> float:
    """Seconds the command may run: what was asked, within the tool's own time limit.

    The limit is kept a little under ``allowed`` so that the tool's own timeout (which kills the
    process group and reports the partial output) fires before the caller's.
    """
    ceiling = max(allowed - 0.5, allowed * 0.9)
    return ceiling if requested is None else min(requested, ceiling)


class _Output:
    """The command's output: sent live as it arrives, and kept up to a byte limit."""

    def __init__(self, limit: int, emit: Callable[[str], None]) -> None:
        self._limit = limit
        self._emit = emit
        self._kept = bytearray()
        self._total = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> None:
        room = self._limit - len(self._kept)
        self._total += len(data)
        if room <= 0:
            return
        part = data[:room]
        self._kept += part
        text = self._decoder.decode(part)
        if len(data) > room:
            text += self._decoder.decode(b"", final=True)
            text += f"\n[output truncated after {self._limit} bytes; the rest is not shown]\n"
        if text:
            self._emit(text)

    def finish(self) -> None:
        """Send what the decoder still holds (an incomplete character at the very end)."""
        if self._total <= self._limit and (text := self._decoder.decode(b"", final=True)):
            self._emit(text)

    def text(self) -> str:
        text = self._kept.decode("utf-8", errors="replace")
        if self._total > self._limit:
            text += f"\n[output truncated: showing the first {self._limit} of {self._total} bytes]"
        return text


class _ShellProtocol(asyncio.SubprocessProtocol):
    def __init__(self, output: _Output) -> None:
        self._output = output
        self.exited = asyncio.Event()
        self.pipe_closed = asyncio.Event()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        self._output.feed(data.encode() if isinstance(data, str) else data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self.pipe_closed.set()

    def process_exited(self) -> None:
        self.exited.set()


def _run_environment(ctx: ToolContext) -> dict[str, str]:
    if not ctx.run_id:
        return {}
    env = {"CULM_RUN_ID": ctx.run_id, "CULM_SESSION_ID": ctx.session_id}
    # The tool call's span when traces are exported, else one whose trace-id is the run id.
    if traceparent := current_traceparent() or traceparent_for(ctx.run_id):
        env["TRACEPARENT"] = traceparent
    return env


async def _spawn(
    argv: list[str], cwd: Path, output: _Output, env: dict[str, str]
) -> tuple[asyncio.SubprocessTransport, _ShellProtocol]:
    loop = asyncio.get_running_loop()
    try:
        return await loop.subprocess_exec(
            lambda: _ShellProtocol(output),
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        raise ToolFailure(f"cannot start bash: {exc.strerror or exc}") from exc


async def _end_process_group(
    transport: asyncio.SubprocessTransport, protocol: _ShellProtocol
) -> None:
    """Stop what is left (SIGTERM to the group: the reaper then ends everything below it), give
    the reaper time to finish, SIGKILL the group if it has not, reap, close the pipe."""
    group = transport.get_pid()
    if _group_alive(group):
        _signal_group(group, signal.SIGTERM)
        with suppress(TimeoutError):
            async with asyncio.timeout(REAPER_WAIT):
                # No event says "the group is empty" (its members are not our children): poll.
                while _group_alive(group):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        _signal_group(group, signal.SIGKILL)
    with suppress(TimeoutError):
        async with asyncio.timeout(REAP_TIMEOUT):
            await protocol.exited.wait()
    with suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_TIMEOUT):
            await protocol.pipe_closed.wait()
    transport.close()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed its user id; it still exists
        return True
    return True


def _signal_group(group: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


async def _run_shielded(cleanup: Coroutine[Any, Any, None]) -> None:
    """Run ``cleanup`` to its end even if this task is cancelled meanwhile; then re-raise the
    cancel, so it is delayed, never lost."""
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError


def _result(text: str, returncode: int | None) -> str:
    if not text:
        text = "(no output)"
    if not text.endswith("\n"):
        text += "\n"
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"{text}exit code: {returncode} (bash was killed by {name})"
    return f"{text}exit code: {returncode}"
