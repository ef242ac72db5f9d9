"""``create_app(settings)``: the FastAPI app, wired through the one composition root (Engine)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import anyio
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from culm._version import __version__
from culm.api import errors, openapi
from culm.api.encoding import FrameCache
from culm.api.httpmetrics import HTTPMetrics
from culm.api.middleware import PROXY_PREFIXES, APIKeyAuth, BodySizeLimit
from culm.api.routes import (
    agents,
    context,
    mcp,
    metrics,
    proxy,
    runs,
    schedules,
    sessions,
    workers,
)
from culm.api.routes import input as input_requests
from culm.api.schemas import Health
from culm.bus.prometheus import BusCollector
from culm.dashboard import routes as dashboard
from culm.metrics.prometheus import Cluster, PrometheusExporter
from culm.proxy.forward import Forwarder
from culm.services import Engine
from culm.settings import Settings, load_settings


def create_app(settings: Settings | None = None, *, engine: Engine | None = None) -> FastAPI:
    """The app. It opens its engine on start-up and drains it on shutdown; pass ``engine`` to
    serve one that is already configured (scripts, tools) — it is started and closed here too."""
    settings = settings or (engine.settings if engine else load_settings())
    engine = engine or Engine(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        shutdown: anyio.Event = app.state.shutdown
        async with engine:
            watcher = asyncio.create_task(_close_streams_on(shutdown, engine))
            try:
                yield
            finally:
                shutdown.set()
                await watcher  # runs drained, then streams ended, before the engine closes
                await forwarder.aclose()

    app = FastAPI(
        title="culm",
        version=__version__,
        description="Run LLM agents as background runs; stream, replay and cancel them.",
        lifespan=lifespan,
        docs_url=None,  # the dashboard serves /docs from the package's assets (no CDN)
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.forwarder = forwarder = Forwarder(
        settings,
        engine.metrics,
        engine.tracing.tracer,
        capture_content=engine.tracing.capture_content,
    )
    app.state.shutdown = anyio.Event()
    app.state.frames = FrameCache()
    app.state.ping_seconds = settings.sse_ping_seconds
    app.state.shutdown_grace = settings.shutdown_timeout / 2
    app.state.prometheus = PrometheusExporter(
        engine.metrics,
        price=engine.pricer.cost,
        server_of=_provider_hosts(settings),
        active_runs=lambda: len(engine.registry) if engine.metrics.started else 0,
        cluster=lambda: _cluster(engine),
    )
    app.state.prometheus.registry.register(BusCollector(engine.bus))
    errors.install(app)
    openapi.install(app)

    @app.get("/health", tags=["health"], response_model=Health, responses={503: {"model": Health}})
    async def health() -> Health | JSONResponse:
        """``ok``, or 503 ``degraded`` naming what does not work (the store). Redis is not
        the truth: while it is unreachable ``redis`` says ``degraded`` and the answer stays
        200 (streams and cancels fall back to the store)."""
        problem = await engine.check_store()
        sandbox = engine.sandbox.kind
        wakeups = engine.wakeups_problem() or "ok"
        redis = engine.bus.state
        if problem is None:
            return Health(
                status="ok", version=__version__, bash_sandbox=sandbox, wakeups=wakeups, redis=redis
            )
        degraded = Health(
            status="degraded",
            version=__version__,
            store=problem,
            bash_sandbox=sandbox,
            wakeups=wakeups,
            redis=redis,
        )
        return JSONResponse(degraded.model_dump(), status_code=503)

    app.include_router(proxy.router)  # first: the routes matched most often
    app.include_router(sessions.router)
    app.include_router(agents.router)
    app.include_router(context.router)
    app.include_router(runs.router)
    app.include_router(input_requests.router)
    app.include_router(mcp.router)
    app.include_router(schedules.router)
    app.include_router(workers.router)
    app.include_router(metrics.router)
    app.include_router(metrics.exposition)
    dashboard.install(app)
    app.add_middleware(
        BodySizeLimit,
        limit=settings.max_request_bytes,
        larger={prefix: settings.proxy_max_request_bytes for prefix in PROXY_PREFIXES},
        proxy_refusal=forwarder.refusal,
    )
    if settings.api_key is not None:
        app.add_middleware(
            APIKeyAuth,
            api_key=settings.api_key.get_secret_value(),
            proxy_refusal=forwarder.refusal,
        )
    app.add_middleware(HTTPMetrics, registry=app.state.prometheus.registry)  # outermost
    return app


async def _cluster(engine: Engine) -> Cluster:
    """Every worker's row (stopped ones too: their counters stay in the sums) and the queue."""
    workers = await engine.list_workers(include_stopped=True)
    inputs = await engine.inputs.counts()
    return Cluster(workers=workers, queue=await engine.queue_stats(), input_requests=inputs)


async def _close_streams_on(shutdown: anyio.Event, engine: Engine) -> None:
    """The server began to stop (a signal, or sse-starlette saw uvicorn exiting): end the active
    runs first, so open streams deliver their terminal events, then end every stream, so clients
    get a clean end instead of a cut connection."""
    await shutdown.wait()
    await engine.drain()
    engine.close_streams()


def _provider_hosts(settings: Settings) -> Callable[[str], str]:
    """A provider's host (the ``server_address`` of its calls in /metrics; "" if none)."""
    urls = {"openai": settings.openai_base_url, "anthropic": settings.anthropic_base_url}
    hosts = {name: urlsplit(url).hostname or "" for name, url in urls.items()}
    return lambda provider: hosts.get(provider, "")
