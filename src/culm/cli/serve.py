"""``culm serve``: the HTTP API on uvicorn, on the embedded store by default.

Plain ``culm serve`` is the all-in-one process: API, worker (it executes the runs) and schedule
ticker. ``culm serve --no-worker`` serves the API only: its runs are executed by ``culm worker``
processes on the same database (see docs/deploy.md).
"""

from __future__ import annotations

import gc
import ipaddress
from typing import TYPE_CHECKING, Annotated, Any

import typer

from culm.cli.agents import AppOption, app_overrides
from culm.errors import ConfigError
from culm.runtime.roles import Role
from culm.settings import Settings, load_settings

if TYPE_CHECKING:
    from culm.tools.sandbox import Sandbox


def serve_command(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default CULM_HOST, 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on (default CULM_PORT, 8420).")
    ] = None,
    no_worker: Annotated[
        bool,
        typer.Option(
            "--no-worker",
            help="Serve the API only: runs are executed by `culm worker` processes on the same "
            "database, schedules are ticked by them.",
        ),
    ] = False,
    apps: AppOption = None,
) -> None:
    """Serve the HTTP API (sessions, runs, live event streams); by default also execute runs."""
    overrides: dict[str, Any] = app_overrides(apps)
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    settings = load_settings(**overrides)
    check_bind(settings)
    serve(settings, role=Role.API if no_worker else Role.EMBEDDED)


def check_bind(settings: Settings) -> None:
    """Refuse to listen beyond this machine without an API key."""
    if settings.api_key is None and not _is_loopback(settings.host):
        raise ConfigError(
            f"refusing to listen on {settings.host} without CULM_API_KEY: anyone who can "
            "reach the port could run agents; set CULM_API_KEY or listen on 127.0.0.1"
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(settings: Settings, *, role: Role = Role.EMBEDDED) -> None:
    import uvicorn

    from culm.api.app import create_app
    from culm.services import Engine

    app = create_app(settings, engine=Engine(settings, role=role))
    # A long-lived server with many streams: keep what start-up built out of the collector's
    # way and collect young objects less often (full collections otherwise stall every stream).
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # End every event stream at once, so open streams do not hold the shutdown up.
            app.state.shutdown.set()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        timeout_graceful_shutdown=int(settings.shutdown_timeout),
        lifespan="on",
    )
    typer.echo(_start_line(settings, role, app.state.engine.sandbox), err=True)
    Server(config).run()


def _start_line(settings: Settings, role: Role, sandbox: Sandbox) -> str:
    url = f"http://{settings.host}:{settings.port}"
    state = f"state in {describe_database(settings)}"
    if role is Role.API:
        return f"culm serving the API only on {url} ({state}; runs are executed by `culm worker`)"
    confined = "bwrap" if sandbox.confined else f"none, unconfined: {sandbox.reason}"
    return f"culm serving on {url} ({state}; bash sandbox: {confined})"


def describe_database(settings: Settings) -> str:
    """The database as a start line shows it: SQLite's file, or the URL without its password."""
    from sqlalchemy.engine import make_url

    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() == "sqlite":
        return str(url.database)
    return url.render_as_string(hide_password=True)
