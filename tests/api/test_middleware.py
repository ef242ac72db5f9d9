"""The API's ASGI middleware driven directly: what each lets through, and the exact refusal it
sends (status, body, headers) when it does not. tests/contract/test_auth.py checks the same
key on every route of the real app; here are the edges of the middleware itself."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from culm.api.middleware import APIKeyAuth, BodySizeLimit, Message, Receive, Scope, Send

KEY = "s3cret-key"
MESSAGE = "missing or wrong API key (send Authorization: Bearer <CULM_API_KEY>)"


@dataclass
class Downstream:
    """The app behind the middleware: reads the whole body, then answers 200 ``ok``."""

    calls: list[Scope] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    last_message: Message | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls.append(scope)
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            self.last_message = message
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def scope_of(
    path: str, headers: dict[str, str] | None = None, kind: str = "http"
) -> dict[str, Any]:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return {"type": kind, "path": path, "headers": raw, "method": "POST"}


async def call(app: Any, scope: dict[str, Any], chunks: list[bytes] | None = None) -> list[Message]:
    """Drive ``app`` with ``scope`` and a body in ``chunks``; what it sent."""
    parts = chunks or [b""]
    pending: list[Message] = [
        {"type": "http.request", "body": c, "more_body": i < len(parts) - 1}
        for i, c in enumerate(parts)
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def status_of(sent: list[Message]) -> int:
    starts = [m["status"] for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, sent
    return int(starts[0])


def error_of(sent: list[Message]) -> tuple[int, dict[bytes, bytes], Any]:
    start, body = sent
    assert start["type"] == "http.response.start"
    assert body["type"] == "http.response.body"
    headers = dict(start["headers"])
    assert len(headers) == len(start["headers"])
    return start["status"], headers, json.loads(body["body"])


# APIKeyAuth


@pytest.mark.parametrize(
    "authorization",
    [f"Bearer {KEY}", f"bearer {KEY}", f"BEARER {KEY}", f"  Bearer {KEY}  ", f"Bearer  {KEY}"],
)
async def test_the_bearer_key_passes_whatever_the_schemes_case(authorization: str) -> None:
    app = Downstream()
    sent = await call(APIKeyAuth(app, KEY), scope_of("/v1/runs", {"Authorization": authorization}))
    assert status_of(sent) == 200 and len(app.calls) == 1


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": KEY},  # no scheme
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": f"Bearer {KEY}x"},
        {"Authorization": "Bearer "},
        {"x-api-key": KEY},  # only on the proxy's routes
    ],
)
async def test_a_missing_or_wrong_key_gets_a_401_json_error(headers: dict[str, str]) -> None:
    app = Downstream()
    sent = await call(APIKeyAuth(app, KEY), scope_of("/v1/runs", headers))
    status, raw, body = error_of(sent)
    assert status == 401
    assert body == {"error": {"code": "unauthorized", "message": MESSAGE}}
    assert raw[b"content-type"] == b"application/json"
    assert raw[b"content-length"] == str(len(sent[1]["body"])).encode()
    assert raw[b"www-authenticate"] == b"Bearer"
    assert app.calls == []


async def test_health_is_open_and_other_scopes_pass_through() -> None:
    app = Downstream()
    auth = APIKeyAuth(app, KEY)
    assert status_of(await call(auth, scope_of("/health"))) == 200
    assert await call(auth, {"type": "lifespan"}) == []
    assert [s["type"] for s in app.calls] == ["http", "lifespan"]


@pytest.mark.parametrize("path", ["/openai/v1/chat/completions", "/anthropic/v1/messages"])
async def test_the_proxy_routes_take_the_key_as_x_api_key_too(path: str) -> None:
    app = Downstream()
    auth = APIKeyAuth(app, KEY)
    assert status_of(await call(auth, scope_of(path, {"x-api-key": KEY}))) == 200
    assert status_of(await call(auth, scope_of(path, {"Authorization": f"Bearer {KEY}"}))) == 200
    assert status_of(await call(auth, scope_of(path, {"x-api-key": "wrong"}))) == 401
    assert status_of(await call(auth, scope_of(path))) == 401
    assert len(app.calls) == 2


async def test_a_websocket_without_the_key_is_closed_4401_before_the_app() -> None:
    app = Downstream()
    auth = APIKeyAuth(app, KEY)
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        sent = await call(auth, scope_of("/v1/runs/x/ws", headers, kind="websocket"))
        assert sent == [{"type": "websocket.close", "code": 4401, "reason": "unauthorized"}]
    assert app.calls == []
    keyed = scope_of("/v1/runs/x/ws", {"Authorization": f"Bearer {KEY}"}, kind="websocket")
    assert await call(auth, keyed) == []
    assert len(app.calls) == 1


class Refusals:
    """A ``proxy_refusal``: records what it was asked to refuse and answers 599."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int, str, str]] = []

    def __call__(self, scope: Scope, status: int, code: str, message: str) -> Any:
        self.asked.append((scope["path"], status, code, message))

        async def answer(answered: Scope, receive: Receive, send: Send) -> None:
            assert answered is scope  # the request's own scope
            assert (await receive())["type"] == "http.disconnect"  # no body to read
            await send({"type": "http.response.start", "status": 599, "headers": []})
            await send({"type": "http.response.body", "body": b"refused"})

        return answer


async def test_a_refusal_on_a_proxy_route_is_the_proxys_own_shape() -> None:
    refusals = Refusals()
    auth = APIKeyAuth(Downstream(), KEY, proxy_refusal=refusals)
    assert status_of(await call(auth, scope_of("/openai/v1/models"))) == 599
    assert refusals.asked == [("/openai/v1/models", 401, "unauthorized", MESSAGE)]
    status, _, _ = error_of(await call(auth, scope_of("/v1/runs")))  # not a proxy route
    assert status == 401
    assert len(refusals.asked) == 1


# BodySizeLimit


def too_large(limit: int) -> dict[str, Any]:
    return {"error": {"code": "body_too_large", "message": f"request body over {limit} bytes"}}


async def test_an_announced_body_over_the_limit_is_refused_before_the_app() -> None:
    app = Downstream()
    limit = BodySizeLimit(app, 10)
    sent = await call(limit, scope_of("/v1/runs", {"content-length": "11"}), [b"x" * 11])
    status, headers, body = error_of(sent)
    assert (status, body) == (413, too_large(10))
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == str(len(sent[1]["body"])).encode()
    assert b"www-authenticate" not in headers
    assert app.calls == []


@pytest.mark.parametrize("size", [9, 10])
async def test_a_body_up_to_the_limit_reaches_the_app(size: int) -> None:
    app = Downstream()
    limit = BodySizeLimit(app, 10)
    body = b"x" * size
    sent = await call(limit, scope_of("/v1/runs", {"content-length": str(size)}), [body])
    assert status_of(sent) == 200
    assert app.bodies == [body]
    sent = await call(limit, scope_of("/v1/runs"), [body[:4], body[4:]])  # streamed
    assert status_of(sent) == 200
    assert app.bodies == [body, body]


@pytest.mark.parametrize("length", [None, "many", "-5"])
async def test_a_streamed_body_over_the_limit_gets_413_and_the_app_sees_a_disconnect(
    length: str | None,
) -> None:
    app = Downstream()
    limit = BodySizeLimit(app, 10)
    headers = {} if length is None else {"content-length": length}
    sent = await call(limit, scope_of("/v1/runs", headers), [b"x" * 6, b"y" * 5, b"z"])
    status, _, body = error_of(sent)  # the app's own 200 is dropped
    assert (status, body) == (413, too_large(10))
    assert app.last_message == {"type": "http.disconnect"}
    assert app.bodies == [b"x" * 6]


async def test_larger_limits_apply_under_their_prefixes_only() -> None:
    app = Downstream()
    limit = BodySizeLimit(app, 10, larger={"/openai/": 20, "/anthropic/": 30})
    body = b"x" * 15
    assert status_of(await call(limit, scope_of("/openai/v1/x"), [body])) == 200
    assert status_of(await call(limit, scope_of("/anthropic/v1/x"), [body * 2])) == 200
    assert status_of(await call(limit, scope_of("/v1/openai/"), [body])) == 413
    sent = await call(limit, scope_of("/openai/v1/x"), [body * 2])
    assert error_of(sent)[2] == too_large(20)


async def test_a_size_refusal_on_a_proxy_route_is_the_proxys_own_shape() -> None:
    refusals = Refusals()
    limit = BodySizeLimit(Downstream(), 10, proxy_refusal=refusals)
    headers = {"content-length": "11"}
    assert status_of(await call(limit, scope_of("/anthropic/v1/messages", headers))) == 599
    streamed = await call(limit, scope_of("/openai/v1/responses"), [b"x" * 11])
    assert status_of(streamed) == 599
    assert refusals.asked == [
        ("/anthropic/v1/messages", 413, "body_too_large", "request body over 10 bytes"),
        ("/openai/v1/responses", 413, "body_too_large", "request body over 10 bytes"),
    ]


async def test_websockets_and_lifespan_pass_the_size_limit_untouched() -> None:
    app = Downstream()
    limit = BodySizeLimit(app, 1)
    ws = scope_of("/v1/runs/x/ws", {"content-length": "99"}, kind="websocket")
    assert await call(limit, ws) == []
    assert await call(limit, {"type": "lifespan"}) == []
    assert [s["type"] for s in app.calls] == ["websocket", "lifespan"]


async def test_an_app_that_reads_on_after_the_refusal_gets_one_answer_only() -> None:
    class Greedy:
        """Reads every message it can get, disconnects included, then answers."""

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            self.seen = [await receive() for _ in range(5)]
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    app = Greedy()
    sent = await call(BodySizeLimit(app, 10), scope_of("/v1/runs"), [b"x" * 11, b"y", b"z"])
    status, _, body = error_of(sent)
    assert (status, body) == (413, too_large(10))
    assert app.seen[0] == {"type": "http.disconnect"}
