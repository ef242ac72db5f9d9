"""``culm run "prompt"``: run an agent in this process, on the embedded store, and stream it.

Exit codes: 0 when the run completes, 1 when it ends in error (or is cancelled by something other
than the user), 2 for a mistake in the command or the configuration, 130 after Ctrl-C. The first
Ctrl-C cancels the run and keeps showing its events until it has ended; a second exits at once.
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
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

import typer

from culm.cli.render import HumanOutput, JsonOutput, Output, Tally, stderr_console
from culm.domain.models import RunTrigger
from culm.errors import UserError
from culm.settings import Settings, load_settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
USER_CANCEL_REASON = "cancelled by user (Ctrl-C)"


@dataclass(frozen=True, kw_only=True)
class RunRequest:
    prompt: str
    model: str | None
    tools: list[str]
    workspace: str | None
    system_prompt: str | None
    json_lines: bool


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
) -> None:
    """Run an agent on PROMPT in this process and stream its answer."""
    request = RunRequest(
        prompt=_read_prompt(prompt),
        model=model,
        tools=split_tools(tools or []),
        workspace=workspace,
        system_prompt=system,
        json_lines=json_lines,
    )
    settings = load_settings(scheduler=False)  # schedules fire in `culm serve`, not here
    # Like asyncio.run: leave SIGINT alone when it is ignored (e.g. a shell's background job).
    catch_sigint = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    try:
        code = asyncio.run(execute(request, settings, catch_sigint=catch_sigint))
    except KeyboardInterrupt:  # Ctrl-C before the handler below was in place
        code = EXIT_INTERRUPTED
    raise typer.Exit(code)


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
    with _sigint_handler(interrupt, enabled=catch_sigint):
        try:
            return await _run(request, settings, output, interrupt)
        except asyncio.CancelledError:
            if not interrupt.count:
                raise
            return EXIT_INTERRUPTED  # Ctrl-C while the engine was starting


@contextlib.contextmanager
def _sigint_handler(handler: Callable[[], None], *, enabled: bool) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    if enabled:
        try:
            loop.add_signal_handler(signal.SIGINT, handler)
        except NotImplementedError:  # Windows: asyncio.run's KeyboardInterrupt remains
            enabled = False
    try:
        yield
    finally:
        if enabled:
            loop.remove_signal_handler(signal.SIGINT)


async def _run(
    request: RunRequest, settings: Settings, output: Output, interrupt: Interrupt
) -> int:
    from culm.services import Engine  # imported here: `culm --help` need not load the engine

    async with Engine(settings) as engine:
        started = time.monotonic()
        run = await engine.run(
            request.prompt,
            model=request.model,
            tools=request.tools,
            workspace=request.workspace,
            system_prompt=request.system_prompt,
            trigger=RunTrigger.CLI,
        )
        interrupt.arm(functools.partial(engine.cancel, run.run_id, reason=USER_CANCEL_REASON))
        tally = Tally()
        async for event in engine.subscribe(run.run_id):
            tally.observe(event)
            output.event(event)
        await interrupt.settle()
        output.finish(tally, run.run_id, time.monotonic() - started)
    return exit_code(tally, interrupted=interrupt.count > 0)


def exit_code(tally: Tally, *, interrupted: bool) -> int:
    if interrupted:
        return EXIT_INTERRUPTED
    if tally.terminal is None:
        raise RuntimeError("the run's event stream ended before its terminal event")
    return EXIT_OK if tally.terminal.type == "complete" else EXIT_FAILED


class Interrupt:
    """The SIGINT handler of ``culm run``.

    The first Ctrl-C cancels the run (the caller keeps draining its events to the terminal one)
    or, before the run exists, cancels the main task. The second exits at once, skipping the
    engine's shutdown: the run is then left to the next start-up's recovery.
    """

    def __init__(self, output: Output) -> None:
        self.count = 0
        self._output = output
        self._main = asyncio.current_task()
        self._cancel: Callable[[], Coroutine[Any, Any, object]] | None = None
        self._pending: asyncio.Task[object] | None = None
        self._over = False

    def arm(self, cancel: Callable[[], Coroutine[Any, Any, object]]) -> None:
        """From now on the first Ctrl-C calls ``cancel`` (the run exists)."""
        self._cancel = cancel

    def __call__(self) -> None:
        self.count += 1
        if self.count > 1:
            self._exit_now()
        if self._over:
            return
        again = "(Ctrl-C again to exit at once)"
        if self._cancel is not None:
            self._output.notice(f"cancelling the run… {again}")
            self._pending = asyncio.create_task(self._cancel())
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
        os._exit(EXIT_INTERRUPTED)
