"""Pure ASGI middleware (``BaseHTTPMiddleware`` would buffer and break streaming)."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from culm.api import cookie

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health", "/dashboard"})
# The dashboard's page, its assets and its sign-in route: nothing in them is data.
OPEN_PREFIXES = ("/dashboard/",)
# The forward proxy's routes: they also take the key as ``x-api-key`` (Anthropic's header),
# and bigger bodies (``CULM_PROXY_MAX_REQUEST_BYTES``).
PROXY_PREFIXES = ("/openai/", "/anthropic/")
# Answers culm's own refusal (status, code, message) of a request to a proxy route, in the
# provider's error shape and metered (``Forwarder.refusal``).
ProxyRefusal = Callable[[Scope, int, str, str], ASGIApp]


async def _refuse(
    refusal: ProxyRefusal | None, scope: Scope, send: Send, status: int, code: str, message: str
) -> None:
    if refusal is not None and scope["path"].startswith(PROXY_PREFIXES):
        await refusal(scope, status, code, message)(scope, _no_body, send)
    else:
        extra = {"www-authenticate": "Bearer"} if status == 401 else {}
        await _send_error(send, status, code, message, **extra)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


async def _send_error(send: Send, status: int, code: str, message: str, **headers: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class APIKeyAuth:
    """With ``CULM_API_KEY`` set, every route but ``/health`` and the dashboard's page (its
    assets and sign-in: no data) needs ``Authorization: Bearer`` (the proxy's routes take
    ``x-api-key`` as well) or the dashboard's sign-in cookie (:mod:`culm.api.cookie`)."""

    def __init__(
        self, app: ASGIApp, api_key: str, proxy_refusal: ProxyRefusal | None = None
    ) -> None:
        self.app = app
        self._proxy_refusal = proxy_refusal
        self._key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] not in ("http", "websocket")
            or path in OPEN_PATHS
            or path.startswith(OPEN_PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        token = _bearer(headers.get(b"authorization", b""))
        if (token and hmac.compare_digest(token, self._key)) or (
            path.startswith(PROXY_PREFIXES)
            and hmac.compare_digest(headers.get(b"x-api-key", b""), self._key)
        ):
            await self.app(scope, receive, send)
            return
        value = cookie.from_header(headers.get(b"cookie", b""))
        if value is not None and cookie.valid(self._key.decode(), value):
            await self._with_cookie(scope, receive, send, headers)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4401, "reason": "unauthorized"})
            return
        message = "missing or wrong API key (send Authorization: Bearer <CULM_API_KEY>)"
        await _refuse(self._proxy_refusal, scope, send, 401, "unauthorized", message)

    async def _with_cookie(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes]
    ) -> None:
        """Let a cookie-authenticated request through unless it could be a cross-site forgery:
        a write without the CSRF header, or a WebSocket from another origin."""
        if scope["type"] == "websocket":
            if not _same_origin(headers):
                await send({"type": "websocket.close", "code": 4403, "reason": "cross-origin"})
                return
        elif (
            scope["method"] not in cookie.SAFE_METHODS
            and cookie.CSRF_HEADER.encode() not in headers
        ):
            message = (
                f"a signed-in browser's {scope['method']} needs the {cookie.CSRF_HEADER} header"
            )
            await _send_error(send, 403, "csrf", message)
            return
        await self.app(scope, receive, send)


def _same_origin(headers: dict[bytes, bytes]) -> bool:
    """The ``Origin`` names the host the request was sent to."""
    origin = headers.get(b"origin", b"").decode("latin-1")
    host = headers.get(b"host", b"").decode("latin-1")
    return bool(host) and origin.partition("://")[2] == host


def _bearer(authorization: bytes) -> bytes:
    """The token of ``Bearer <token>``; the scheme's case does not matter (RFC 7235)."""
    scheme, _, token = authorization.strip().partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else b""


class BodySizeLimit:
    """Refuse request bodies over ``limit`` bytes with 413, whether announced or streamed;
    ``larger`` gives other limits to the paths under some prefixes."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        larger: dict[str, int] | None = None,
        proxy_refusal: ProxyRefusal | None = None,
    ) -> None:
        self.app = app
        self._proxy_refusal = proxy_refusal
        self.default = limit
        self.larger = tuple((larger or {}).items())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _refuse(self._proxy_refusal, scope, send, 413, "body_too_large", _message(limit))
            return
        received = 0
        refused = False

        async def guarded_send(message: Message) -> None:
            if not refused:  # once we answered 413, the app's own answer is dropped
                await send(message)

        async def limited_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                if received > limit:
                    await _refuse(
                        self._proxy_refusal, scope, send, 413, "body_too_large", _message(limit)
                    )
                    refused = True
                    return {"type": "http.disconnect"}
            return message

        await self.app(scope, limited_receive, guarded_send)

    def _limit(self, path: str) -> int:
        for prefix, limit in self.larger:
            if path.startswith(prefix):
                return limit
        return self.default


def _message(limit: int) -> str:
    return f"request body over {limit} bytes"
