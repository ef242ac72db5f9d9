"""``culm serve``: the HTTP API on uvicorn, on the embedded store by default."""

from __future__ import annotations

import gc
import ipaddress
from typing import Annotated, Any

import typer

from culm.errors import ConfigError
from culm.settings import Settings, load_settings


def serve_command(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default CULM_HOST, 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on (default CULM_PORT, 8420).")
    ] = None,
) -> None:
    """Serve the HTTP API (sessions, runs, live event streams)."""
    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    settings = load_settings(**overrides)
    check_bind(settings)
    serve(settings)


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


def serve(settings: Settings) -> None:
    import uvicorn

    from culm.api.app import create_app

    app = create_app(settings)
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
    sandbox = app.state.engine.sandbox
    confined = "bwrap" if sandbox.confined else f"none, unconfined: {sandbox.reason}"
    typer.echo(
        f"culm serving on http://{settings.host}:{settings.port} "
        f"(state in {settings.resolved_database_url.split('///')[-1]}; bash sandbox: {confined})",
        err=True,
    )
    Server(config).run()
