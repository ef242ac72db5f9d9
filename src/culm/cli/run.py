"""``culm run "prompt"``: run an agent in this process, on the embedded store, and stream it.

Exit codes: 0 when the run completes, 1 when it ends in error (or is cancelled by something other
than the user), 2 for a mistake in the command or the configuration, 130 after Ctrl-C, 143 after
SIGTERM. The first Ctrl-C or SIGTERM cancels the run and keeps showing its events until it has
ended, then closes the engine (its tools' processes and MCP servers stopped); a second exits at
once, and the processes culm started end with it (their reaper's parent-death signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, NoReturn

import typer

from culm.cli.agents import AppOption, app_overrides
from culm.cli.input import Asker
from culm.cli.render import HumanOutput, JsonOutput, Output, Tally, stderr_console
from culm.domain.models import RunTrigger
from culm.errors import UserError
from culm.settings import Settings, load_settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
USER_CANCEL_REASON = "cancelled by user (Ctrl-C)"
TERM_CANCEL_REASON = "cancelled: culm run got SIGTERM"
_EXIT_CODES = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED}
_REASONS = {signal.SIGINT: USER_CANCEL_REASON, signal.SIGTERM: TERM_CANCEL_REASON}


@dataclass(frozen=True, kw_only=True)
class RunRequest:
    prompt: str
    agent: str | None
    model: str | None
    tools: list[str] | None
    workspace: str | None
    system_prompt: str | None
    json_lines: bool
    require_approval: list[str] = field(default_factory=list)
    yes: bool = False


def run_command(
    prompt: Annotated[str, typer.Argument(help='The user message ("-" reads it from stdin).')],
    model: Annotated[
        str | None,
        typer.Option(
            "-m", "--model", help="provider:model, e.g. openai:gpt-4o-mini.", show_default=False
        ),
    ] = None,
    tools: Annotated[
        list[str] | None,
        typer.Option(
            "--tools", help="Tools or groups to enable, comma-separated (e.g. read,bash)."
        ),
    ] = None,
    workspace: Annotated[
        str | None,
        typer.Option("--workspace", help="Directory the tools work in (default: a fresh one)."),
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="The system prompt.")] = None,
    json_lines: Annotated[
        bool, typer.Option("--json", help="Print every run event as a JSON line on stdout.")
    ] = False,
    require_approval: Annotated[
        list[str] | None,
        typer.Option(
            "--require-approval",
            help="Tools (names or patterns, comma-separated) whose calls wait for your approval.",
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Approve every call that needs approval.")
    ] = False,
    agent: Annotated[
        str | None,
        typer.Option(
            "--agent",
            help="A named agent (see `culm agents`); the options given override its settings.",
            show_default=False,
        ),
    ] = None,
    apps: AppOption = None,
) -> None:
    """Run an agent on PROMPT in this process and stream its answer."""
    request = RunRequest(
        prompt=_read_prompt(prompt),
        agent=agent,
        model=model,
        tools=split_tools(tools) if tools is not None else None,
        workspace=workspace,
        system_prompt=system,
        json_lines=json_lines,
        require_approval=split_tools(require_approval or []),
        yes=yes,
    )
    # Schedules fire in `culm serve`, not here.
    settings = load_settings(scheduler=False, **app_overrides(apps))
    # Like asyncio.run: leave SIGINT alone when it is ignored (e.g. a shell's background job).
    catch_sigint = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    try:
        with _sigterm_as_interrupt():
            code = asyncio.run(execute(request, settings, catch_sigint=catch_sigint))
    except KeyboardInterrupt:  # Ctrl-C before the handler below was in place
        code = EXIT_INTERRUPTED
    except _Terminated:  # SIGTERM before the handler below was in place
        code = EXIT_TERMINATED
    raise typer.Exit(code)


class _Terminated(BaseException):
    pass


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Until the loop's own handler is in place, SIGTERM stops start-up (like Ctrl-C) instead of
    killing the process outright; left alone when it is ignored."""

    def terminated(signum: int, frame: object) -> None:
        raise _Terminated

    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _read_prompt(prompt: str) -> str:
    text = sys.stdin.read() if prompt == "-" else prompt
    if not text.strip():
        raise UserError("the prompt is empty")
    return text


def split_tools(values: list[str]) -> list[str]:
    """``["read,bash", "grep"]`` → ``["read", "bash", "grep"]``."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


async def execute(request: RunRequest, settings: Settings, *, catch_sigint: bool = True) -> int:
    """Run the request and return the exit code. Ctrl-C is handled here, not by asyncio.run."""
    console = stderr_console()
    output: Output = (
        JsonOutput(sys.stdout, console) if request.json_lines else HumanOutput(sys.stdout, console)
    )
    interrupt = Interrupt(output)
    signals = [signal.SIGTERM, *([signal.SIGINT] if catch_sigint else [])]
    with _signal_handlers(interrupt, signals):
        try:
            return await _run(request, settings, output, interrupt)
        except asyncio.CancelledError:
            if not interrupt.count:
                raise
            return interrupt.exit_code  # a signal while the engine was starting


@contextlib.contextmanager
def _signal_handlers(
    handler: Callable[[signal.Signals], None], signals: list[signal.Signals]
) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    try:
        for signum in signals:
            try:
                loop.add_signal_handler(signum, handler, signum)
            except NotImplementedError:  # Windows: asyncio.run's KeyboardInterrupt remains
                continue
            installed.append(signum)
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


async def _run(
    request: RunRequest, settings: Settings, output: Output, interrupt: Interrupt
) -> int:
    # Imported here: `culm --help` need not load the engine.
    from culm.runtime.roles import Role
    from culm.services import Engine

    # Role CLI: its run is reserved owned by this process and executed here, never queued for
    # (or claimed from) anyone else; no ticker.
    async with Engine(settings, role=Role.CLI) as engine:
        started = time.monotonic()
        run = await engine.run(
            request.prompt,
            agent=request.agent,
            model=request.model,
            tools=request.tools,
            workspace=request.workspace,
            system_prompt=request.system_prompt,
            require_approval=request.require_approval,
            trigger=RunTrigger.CLI,
        )
        asker = Asker(engine.respond, yes=request.yes, console=stderr_console())
        interrupt.arm(functools.partial(_cancel, engine.cancel, run.run_id, asker))
        tally = Tally()
        async for event in engine.subscribe(run.run_id):
            tally.observe(event)
            output.event(event)
            await asker.on_event(event)  # people in the loop: asks, or answers by the options
        await interrupt.settle()
        output.finish(tally, run.run_id, time.monotonic() - started)
    return exit_code(tally, interrupted=interrupt.count > 0, code=interrupt.exit_code)


async def _cancel(
    cancel: Callable[..., Coroutine[Any, Any, object]], run_id: str, asker: Asker, *, reason: str
) -> object:
    asker.stop()  # a question on screen is not answered any more
    return await cancel(run_id, reason=reason)


def exit_code(tally: Tally, *, interrupted: bool, code: int = EXIT_INTERRUPTED) -> int:
    if interrupted:
        return code
    if tally.terminal is None:
        raise RuntimeError("the run's event stream ended before its terminal event")
    return EXIT_OK if tally.terminal.type == "complete" else EXIT_FAILED


class Interrupt:
    """The SIGINT and SIGTERM handler of ``culm run``.

    The first signal cancels the run (the caller keeps draining its events to the terminal one)
    or, before the run exists, cancels the main task. The second exits at once, skipping the
    engine's shutdown: the run is then left to a sweeper (once its lease runs out), and the processes
    culm started end with it. The exit code is the first signal's (130 for SIGINT, 143 for
    SIGTERM).
    """

    def __init__(self, output: Output) -> None:
        self.count = 0
        self.exit_code = EXIT_INTERRUPTED
        self._output = output
        self._main = asyncio.current_task()
        self._cancel: Callable[..., Coroutine[Any, Any, object]] | None = None
        self._pending: asyncio.Task[object] | None = None
        self._over = False

    def arm(self, cancel: Callable[..., Coroutine[Any, Any, object]]) -> None:
        """From now on the first signal calls ``cancel(reason=…)`` (the run exists)."""
        self._cancel = cancel

    def __call__(self, signum: signal.Signals = signal.SIGINT) -> None:
        self.count += 1
        if self.count > 1:
            self._exit_now()
        self.exit_code = _EXIT_CODES.get(signum, EXIT_INTERRUPTED)
        if self._over:
            return
        again = "(Ctrl-C again to exit at once)"
        if self._cancel is not None:
            self._output.notice(f"cancelling the run… {again}")
            self._pending = asyncio.create_task(
                self._cancel(reason=_REASONS.get(signum, USER_CANCEL_REASON))
            )
        elif self._main is not None:
            self._output.notice(f"stopping… {again}")
            self._main.cancel()

    async def settle(self) -> None:
        """The run is over: from now on Ctrl-C only counts; wait for the cancel request, if any."""
        self._over = True
        if self._pending is not None:
            await self._pending

    def _exit_now(self) -> NoReturn:
        self._output.notice("exiting")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(self.exit_code)
