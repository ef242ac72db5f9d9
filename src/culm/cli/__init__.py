"""The ``culm`` command line: one module per command or command group, registered on :data:`app`.

:func:`main` is the one error boundary: a :class:`~culm.errors.UserError` from any command becomes
one line on stderr and exit code 2; anything unexpected becomes one line (the traceback too with
``CULM_DEBUG=1``) and exit code 1.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Annotated

import typer
from rich.text import Text

from culm._version import __version__
from culm.cli import (
    agents,
    compact,
    mcp,
    metrics,
    run,
    runs,
    schedules,
    serve,
    sessions,
    worker,
    workers,
)
from culm.cli.input import input_command
from culm.cli.render import stderr_console
from culm.errors import UserError

EXIT_USAGE = 2

app = typer.Typer(
    name="culm",
    help="culm: an agent execution engine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's own help: typer's rich help shows a type even for a flag (``--json <bool>``).
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"culm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """culm: run LLM agents as background runs, stream them live, cancel them."""
    configure_logging()


def configure_logging() -> None:
    """The engine's logs (stdlib ``culm.*`` loggers) go to stderr, since stdout is the command's
    output: warnings and worse, or everything with ``CULM_DEBUG=1``."""
    level = logging.DEBUG if os.environ.get("CULM_DEBUG") else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("culm")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


# Commands. A command group lives in its own module as a ``typer.Typer`` and is added with
# ``app.add_typer(module.app, name=…)``.
app.command("run")(run.run_command)
app.command("serve")(serve.serve_command)
app.command("worker")(worker.worker_command)
app.command("workers")(workers.workers_command)
app.command("sessions")(sessions.sessions_command)
app.command("runs")(runs.runs_command)
app.command("show")(runs.show_command)
app.command("tail")(runs.tail_command)
app.command("cancel")(runs.cancel_command)
app.command("input")(input_command)
app.command("compact")(compact.compact_command)
app.command("metrics")(metrics.metrics_command)
app.command("agents")(agents.agents_command)
app.add_typer(mcp.app, name="mcp")
app.add_typer(schedules.app, name="schedules")


def main() -> None:
    """The console script (``culm``) and ``python -m culm``."""
    try:
        app(prog_name="culm")
    except UserError as exc:
        report_error(str(exc))
        sys.exit(EXIT_USAGE)
    except BrokenPipeError:
        _silence_stdout()
        sys.exit(1)
    except Exception as exc:
        report_internal_error(exc)
        sys.exit(1)


def report_error(message: str) -> None:
    """One line on stderr: ``error: <message>``."""
    stderr_console().print(Text.assemble(("error: ", "bold red"), " ".join(message.split())))


def report_internal_error(exc: BaseException) -> None:
    message = f"internal error: {type(exc).__name__}: {exc}"
    if os.environ.get("CULM_DEBUG"):
        traceback.print_exception(exc)
        report_error(message)
    else:
        report_error(f"{message} (rerun with CULM_DEBUG=1 to see the traceback)")


def _silence_stdout() -> None:
    """After the reader of stdout went away: keep the interpreter's final flush quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
