"""Prometheus figures of the HTTP API itself: requests and their latency by route template.

``http_server_request_duration_seconds`` (the OpenTelemetry HTTP semantic conventions' name)
is labelled ``http_request_method``, ``http_route`` (the template, ``/v1/runs/{run_id}``: never
an id, so the series stay few; ``unmatched`` for a path no route has) and
``http_response_status_code``; its ``_count`` is the request count. A streaming response is
timed to its end. Pure ASGI (it never buffers a body).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
UNMATCHED = "unmatched"


class HTTPMetrics:
    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.duration = Histogram(
            "http_server_request_duration",
            "Duration of HTTP server requests, in seconds.",
            ["http_request_method", "http_route", "http_response_status_code"],
            unit="seconds",
            buckets=BUCKETS,
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app raises before answering

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            self.duration.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - started
            )
