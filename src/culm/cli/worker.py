"""``culm worker``: a process that executes runs, without the HTTP API.

It claims ready runs from the database (``CULM_DATABASE_URL``; any number of workers and
``culm serve --no-worker`` API processes share one PostgreSQL database), executes up to
``--concurrency`` of them at once, and runs the schedule ticker unless ``CULM_SCHEDULER=false``.
SIGTERM or SIGINT stops it cleanly: it stops claiming, then ends or hands back its runs by
``CULM_SHUTDOWN_POLICY`` within ``CULM_SHUTDOWN_GRACE``, and exits 0.
"""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING, Annotated, Any

import typer

from culm.cli.agents import AppOption, app_overrides
from culm.cli.serve import describe_database
from culm.errors import ConfigError, StorageUnavailableError, describe
from culm.settings import Settings, load_settings

if TYPE_CHECKING:
    from culm.services import Engine

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def worker_command(
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            min=1,
            help="Runs executed at once (default CULM_WORKER_CONCURRENCY, 64).",
            show_default=False,
        ),
    ] = None,
    apps: AppOption = None,
) -> None:
    """Execute runs from the shared database until SIGTERM or SIGINT (no HTTP API)."""
    overrides: dict[str, Any] = app_overrides(apps)
    if concurrency is not None:
        overrides["worker_concurrency"] = concurrency
    settings = load_settings(**overrides)
    asyncio.run(work(settings))


async def work(settings: Settings) -> None:
    """Run an engine in the WORKER role until a stop signal, then close it (which drains it)."""
    from culm.runtime.roles import Role
    from culm.services import Engine

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in STOP_SIGNALS:
        loop.add_signal_handler(number, _on_signal, stop, number)
    try:
        engine = Engine(settings, role=Role.WORKER)
        await _start(engine)
        try:
            typer.echo(
                f"culm worker {engine.worker_id} on {describe_database(settings)} "
                f"(concurrency {settings.worker_concurrency}; "
                f"schedules {'on' if settings.scheduler else 'off'}; "
                f"stops on SIGTERM/SIGINT, shutdown policy {settings.shutdown_policy.value})",
                err=True,
            )
            await stop.wait()
        finally:
            await engine.aclose()
    finally:
        for number in STOP_SIGNALS:
            loop.remove_signal_handler(number)


async def _start(engine: Engine) -> None:
    """Start the engine; a database it cannot reach is the setting's fault, said in one line."""
    from culm.storage.health import is_store_failure

    try:
        await engine.start()
    except Exception as exc:
        if not (is_store_failure(exc) or isinstance(exc, StorageUnavailableError)):
            raise
        where = describe_database(engine.settings)
        reason = describe(getattr(exc, "orig", None) or exc)
        raise ConfigError(f"CULM_DATABASE_URL: cannot use {where} ({reason})") from exc


def _on_signal(stop: asyncio.Event, number: int) -> None:
    if stop.is_set():
        typer.echo(f"culm worker: already stopping ({signal.Signals(number).name})", err=True)
        return
    typer.echo(f"culm worker: {signal.Signals(number).name}, stopping", err=True)
    stop.set()
