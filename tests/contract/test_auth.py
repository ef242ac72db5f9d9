"""The API key: with ``CULM_API_KEY`` set, every route but ``/health`` needs it.

The contract (docs/ARCHITECTURE.md, "HTTP API"): every route but ``/health`` (and the
dashboard's page, assets and sign-in, which hold no data) needs ``Authorization: Bearer <key>``
or the dashboard's sign-in cookie; the proxy also accepts ``x-api-key``. The routes are not listed
by hand: they are read from the app itself (HTTP and WebSocket, every method), so a route added
later is covered without touching this file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import websockets
from fastapi.routing import APIWebSocketRoute
from starlette.routing import Mount, WebSocketRoute

import culm
from culm.api.app import create_app
from tests.api.conftest import running_server

KEY = "s3cret-key"
CLOSED_PORT = "http://127.0.0.1:9"  # nothing listens: a forwarded call fails at once, offline
WRONG = [
    {"authorization": "Bearer nope"},
    {"authorization": f"Bearer {KEY}x"},
    {"authorization": KEY},
    {"authorization": f"Basic {KEY}"},
    {"x-api-key": "nope"},
]


def _leaves(routes: Iterable[Any]) -> Iterator[Any]:
    """Every route of the app, through the routers it includes."""
    for route in routes:
        if hasattr(route, "effective_candidates"):  # an included router
            yield from _leaves(route.effective_candidates())
            yield from route.effective_low_priority_routes()
        else:
            yield route


def _endpoints(settings: culm.Settings) -> list[tuple[str, str]]:
    """(method, path) for every route and method of the app; ``WS`` for WebSocket routes."""
    found: set[tuple[str, str]] = set()
    for route in _leaves(create_app(settings).routes):
        inner = getattr(route, "starlette_route", None) or route
        if isinstance(inner, APIWebSocketRoute | WebSocketRoute):
            found.add(("WS", inner.path))
        elif isinstance(inner, Mount):  # static files: every path below it
            found.add(("GET", inner.path + "/{path}"))
        else:
            found.update((method, route.path) for method in route.methods)
    return sorted(found)


def _open_dashboard(path: str) -> bool:
    """The dashboard's page, its assets and its sign-in route hold no data: open to all."""
    return path == "/dashboard" or path.startswith("/dashboard/")


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


@pytest.fixture
def keyed(tmp_path: Path) -> culm.Settings:
    return culm.Settings(
        home=tmp_path / "home",
        api_key=KEY,
        openai_base_url=CLOSED_PORT,
        anthropic_base_url=CLOSED_PORT,
        openai_api_key=None,
        anthropic_api_key=None,
    )


def test_the_enumeration_sees_every_kind_of_route(keyed: culm.Settings) -> None:
    endpoints = _endpoints(keyed)
    for expected in [
        ("WS", "/v1/runs/{run_id}/ws"),
        ("GET", "/metrics"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("POST", "/openai/v1/chat/completions"),
        ("GET", "/openai/v1/models"),
        ("POST", "/anthropic/v1/messages"),
        ("POST", "/v1/runs"),
        ("DELETE", "/v1/sessions/{session_id}"),
        ("PATCH", "/v1/schedules/{schedule_id}"),
        ("HEAD", "/docs"),
        ("GET", "/v1/workers"),
    ]:
        assert expected in endpoints
    assert len(endpoints) > 40


async def _refused_ws(url: str, headers: dict[str, str]) -> bool:
    """True when the server refuses the WebSocket handshake (401/403 before accepting)."""
    try:
        async with websockets.connect(url, additional_headers=headers, open_timeout=10):
            return False
    except websockets.InvalidStatus as refused:
        return refused.response.status_code in {401, 403}


async def test_every_route_and_method_refuses_a_missing_or_wrong_key(
    keyed: culm.Settings,
) -> None:
    endpoints = _endpoints(keyed)
    async with (
        running_server(keyed) as server,
        httpx2.AsyncClient(base_url=server.url, timeout=10) as client,
    ):
        ws_base = server.url.replace("http", "ws")
        for method, path in endpoints:
            url = _concrete(path)
            for headers in [{}, *WRONG]:
                if method == "WS":
                    assert await _refused_ws(ws_base + url, headers), (path, headers)
                    continue
                answer = await client.request(method, url, headers=headers)
                if path == "/health" or _open_dashboard(path):
                    assert answer.status_code != 401, (method, path)
                    continue
                assert answer.status_code == 401, (method, path, headers)
                if method != "HEAD":
                    assert answer.json()["error"]["code"] == "unauthorized"


async def test_with_the_key_every_route_is_reached(keyed: culm.Settings) -> None:
    """The same requests with the key get past the guard (so the refusals above are the
    guard's, not a 404 of a wrong path)."""
    good = {"authorization": f"Bearer {KEY}"}
    async with (
        running_server(keyed) as server,
        httpx2.AsyncClient(base_url=server.url, timeout=10) as client,
    ):
        ws_base = server.url.replace("http", "ws")
        for method, path in _endpoints(keyed):
            url = _concrete(path)
            if method == "WS":
                assert not await _refused_ws(ws_base + url, good)
                continue
            answer = await client.request(method, url, headers=good)
            assert answer.status_code not in {401, 404, 405} or "{" in path, (method, path)
            assert answer.status_code != 401, (method, path)
        proxy = await client.get("/openai/v1/models", headers={"x-api-key": KEY})
        assert proxy.status_code != 401  # the proxy also takes the key as x-api-key
        elsewhere = await client.get("/v1/runs", headers={"x-api-key": KEY})
        assert elsewhere.status_code == 401  # … and only the proxy
