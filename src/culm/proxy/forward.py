"""The forwarder: one shared upstream client, and an :class:`Exchange` per proxied request.

An exchange is an ASGI response. It sends the request upstream, relays the answer's status,
headers and body bytes as they arrive (through a :mod:`tap <culm.proxy.taps>` that reads the
usage), and meters the request: ``request_started`` before it goes upstream,
``request_completed`` once it is over, whatever the end:

=====================================  =========  ===========  =======================
end                                    status     status_code  partial
=====================================  =========  ===========  =======================
upstream answered, body relayed        success    upstream's   no
upstream answered with an error        error      upstream's   no
no answer in ``proxy_read_timeout``    timeout    504          no
upstream unreachable                   error      502          no
refused by culm (key: 401, size: 413)  error      401 / 413    no
body cut by the upstream / timed out   error /    upstream's   yes
                                       timeout
client went away                       error      upstream's,  yes once the answer
                                                  else 499     had started
=====================================  =========  ===========  =======================

A relayed answer that breaks off is ended by closing the client's connection (the client then
sees a cut stream, never a stream that looks complete). The client's disconnect is watched
while waiting for the upstream too, so the upstream request is abandoned at once. The upstream
response is always closed.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import httpx2
from opentelemetry import trace
from opentelemetry.trace import Span
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from culm.domain.models import Usage
from culm.domain.time import utc_now
from culm.errors import ConfigError, describe
from culm.logs import get_logger
from culm.metrics.events import (
    EventMeta,
    ForwardStatus,
    RequestCompleted,
    RequestStarted,
    new_event_id,
)
from culm.metrics.pipeline import MetricsPipeline
from culm.providers.catalog import provider_config
from culm.providers.http import json_or_none
from culm.proxy.headers import RawHeaders, client_headers, redact, upstream_headers
from culm.proxy.taps import BodyTap, Tap, UsageFormat, stream_tap
from culm.proxy.trace import trace_id
from culm.proxy.transport import AsyncioTransport
from culm.settings import Settings
from culm.tracing import wire_content
from culm.tracing.content import OUTPUT_MESSAGES
from culm.tracing.spans import end_proxy_span, start_proxy_span

log = get_logger(__name__)

Provider = Literal["openai", "anthropic"]
CLIENT_CLOSED: Final = 499  # nginx's "client closed request": no upstream status was seen


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A proxied route. ``name`` is the metrics endpoint (``openai.chat_completions``);
    ``path`` is appended to the provider's base URL."""

    name: str
    provider: Provider
    method: str
    path: str
    usage: UsageFormat


@dataclass(frozen=True, slots=True)
class _Upstream:
    base_url: str
    credential: tuple[bytes, bytes] | None
    _urls: dict[str, httpx2.URL] = field(default_factory=dict)

    def url(self, path: str) -> httpx2.URL:
        """``base_url/path``, parsed once."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx2.URL(f"{self.base_url}/{path}")
        return url


class Forwarder:
    """Owns the upstream HTTP client; :meth:`exchange` makes the response for one request."""

    def __init__(
        self,
        settings: Settings,
        metrics: MetricsPipeline,
        tracer: trace.Tracer | None = None,
        *,
        capture_content: bool = False,
    ) -> None:
        self._settings = settings
        self.metrics = metrics
        self.tracer = tracer or trace.NoOpTracer()  # a span per request (culm.tracing)
        self.capture_content = capture_content  # message content on the spans
        self.culm_key = (
            settings.api_key.get_secret_value().encode() if settings.api_key is not None else None
        )
        self._client: httpx2.AsyncClient | None = None
        self._upstreams: dict[Provider, _Upstream | ConfigError] = {}

    @property
    def client(self) -> httpx2.AsyncClient:
        if self._client is None:
            s = self._settings
            limits = httpx2.Limits(
                max_connections=s.proxy_max_connections,
                max_keepalive_connections=s.proxy_max_connections,
            )
            self._client = httpx2.AsyncClient(
                timeout=httpx2.Timeout(s.proxy_read_timeout, connect=s.proxy_connect_timeout),
                # The environment's CA bundle (``SSL_CERT_FILE``, ``SSL_CERT_DIR``) and proxies
                # (``HTTPS_PROXY`` …), as for the providers' client.
                transport=AsyncioTransport(
                    limits=limits,
                    ssl_context=httpx2.create_ssl_context(trust_env=True),
                    proxies=urllib.request.getproxies(),
                ),
                follow_redirects=False,
                trust_env=False,
            )
            for name in list(self._client.headers):  # send the client's headers, not httpx2's
                del self._client.headers[name]
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def upstream(self, provider: Provider) -> _Upstream | ConfigError:
        """Where ``provider`` is and the server's key for it (or why it cannot be reached)."""
        found = self._upstreams.get(provider)
        if found is None:
            try:
                config = provider_config(provider, self._settings)
            except ConfigError as exc:
                found = exc
            else:
                found = _Upstream(config.base_url, _credential(provider, config.key))
            self._upstreams[provider] = found
        return found

    def exchange(self, endpoint: Endpoint, scope: Scope, body: bytes) -> Exchange:
        return Exchange(self, endpoint, scope, body)

    def refusal(self, scope: Scope, status: int, code: str, message: str) -> Response:
        """culm's own refusal of a request to a proxy route before it is forwarded (401 for the
        culm key, 413 for its size): in the provider's error shape, metered like the proxy's
        other errors when the route is a proxied endpoint."""
        from culm.proxy.endpoints import ROUTES  # it builds on this module's Endpoint

        endpoint = ROUTES.get(scope["path"])
        if endpoint is not None:
            return Refusal(self, endpoint, scope, (status, code, message))
        provider: Provider = "anthropic" if scope["path"].startswith("/anthropic/") else "openai"
        body = json.dumps(_error_body(provider, code, message)).encode()
        return Response(body, status_code=status, media_type="application/json")


def _credential(provider: Provider, key: str | None) -> tuple[bytes, bytes] | None:
    if key is None:
        return None
    if provider == "anthropic":
        return (b"x-api-key", key.encode())
    return (b"authorization", b"Bearer " + key.encode())


class Exchange(Response):
    """One proxied request, as the ASGI response that performs it."""

    def __init__(self, forwarder: Forwarder, endpoint: Endpoint, scope: Scope, body: bytes) -> None:
        super().__init__()  # what FastAPI may look at (``background``); the rest is ours
        self._forwarder = forwarder
        self._endpoint = endpoint
        self._request_headers: RawHeaders = scope["headers"]
        self._query = scope.get("query_string", b"")
        self.request_id = new_event_id()
        self._trace_id = trace_id(self._request_headers)
        payload = json_or_none(body) if endpoint.method == "POST" else None
        self._request = _prepare(endpoint, body, payload)
        # The request's content, kept until its span has it (only when capture is on).
        self._input = payload if forwarder.capture_content and isinstance(payload, dict) else None
        self._output: wire_content.OutputRecorder | None = None
        # The outcome, filled in as the exchange goes.
        self._credential: tuple[bytes, bytes] | None = None  # the server's, once chosen
        self._response: httpx2.Response | None = None
        self._upstream_status: int | None = None
        self._tap: Tap = Tap()
        self._status = ForwardStatus.ERROR
        self._error: str | None = None
        self._started_response = False
        self._complete = False
        self._finished = False
        self._disconnected = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        self._meter_start()
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.create_task(self._watch_disconnect(receive, task))
        try:
            await self._relay(send)
        except asyncio.CancelledError:
            if not self._disconnected or task.uncancel() > 0:
                raise  # not (only) our own cancel: the server is stopping
        finally:
            self._finished = True
            watcher.cancel()
            try:
                if self._response is not None:
                    await asyncio.shield(self._response.aclose())
            finally:
                self._meter_end(time.perf_counter() - started)

    async def _watch_disconnect(self, receive: Receive, exchange: asyncio.Task[Any]) -> None:
        """Cancel the exchange when the client goes away before it is over."""
        while (await receive())["type"] != "http.disconnect":
            pass
        if not self._complete and not self._finished:
            self._disconnected = True
            exchange.cancel()

    async def _relay(self, send: Send) -> None:
        upstream = self._forwarder.upstream(self._endpoint.provider)
        if isinstance(upstream, ConfigError):
            await self._refuse(send, 502, "upstream_misconfigured", str(upstream))
            return
        self._credential = upstream.credential
        try:
            self._response = await self._send_upstream(upstream)
        except httpx2.TimeoutException as exc:
            self._status = ForwardStatus.TIMEOUT
            message = f"{self._endpoint.provider} did not answer in time ({describe(exc)})"
            await self._refuse(send, 504, "upstream_timeout", message)
            return
        except httpx2.RequestError as exc:
            message = f"cannot reach {self._endpoint.provider}: {describe(exc)}"
            await self._refuse(send, 502, "upstream_unreachable", message)
            return
        await self._pass_body(self._response, send)

    async def _send_upstream(self, upstream: _Upstream) -> httpx2.Response:
        url = upstream.url(self._endpoint.path)
        if self._query:
            url = url.copy_with(query=self._query)
        headers = upstream_headers(
            self._request_headers, credential=upstream.credential, culm_key=self._forwarder.culm_key
        )
        request = httpx2.Request(
            self._endpoint.method,
            url,
            content=self._request.body if self._endpoint.method == "POST" else None,
            headers=headers,
        )
        return await self._forwarder.client.send(request, stream=True)

    async def _pass_body(self, response: httpx2.Response, send: Send) -> None:
        status = self._upstream_status = response.status_code
        content_type = response.headers.get("content-type", "")
        streaming = content_type.startswith("text/event-stream")
        if status >= 400:
            self._tap = BodyTap(self._endpoint.usage, failed=True)
        elif streaming:
            hide = self._request.hide_usage_chunk
            self._tap = stream_tap(self._endpoint.usage, hide_usage_chunk=hide)
        else:
            self._tap = BodyTap(self._endpoint.usage)
        if status < 400:
            self._tap.content = self._output
        keep_length = not (streaming and self._request.hide_usage_chunk)
        headers = client_headers(
            ((name.lower(), value) for name, value in response.headers.raw),
            keep_length=keep_length,
        )
        headers.append((b"x-culm-request-id", self.request_id.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        self._started_response = True
        tap = self._tap
        try:
            async for chunk in response.aiter_raw():
                if tap.passes_through:  # the bytes go on first, then the tap reads them
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    tap.feed(chunk)
                elif out := tap.feed(chunk):
                    await send({"type": "http.response.body", "body": out, "more_body": True})
        except httpx2.TimeoutException:
            self._status = ForwardStatus.TIMEOUT
            self._error = f"{self._endpoint.provider} stopped sending (read timeout)"
            return  # leaves the response incomplete: the server closes the connection
        except httpx2.RequestError as exc:
            self._error = f"the answer from {self._endpoint.provider} broke off: {describe(exc)}"
            return
        self._complete = True
        await send({"type": "http.response.body", "body": tap.close(), "more_body": False})
        if status < 400 and tap.error is None:
            self._status = ForwardStatus.SUCCESS
        else:  # an error answer, or an error event inside a 200 stream
            self._error = tap.error or f"HTTP {status}"

    async def _refuse(self, send: Send, status: int, code: str, message: str) -> None:
        """Answer the client ourselves (the upstream gave no answer), in the provider's error
        format so its SDK shows ``message``."""
        self._upstream_status = status
        self._error = message
        body = json.dumps(_error_body(self._endpoint.provider, code, message)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-culm-request-id", self.request_id.encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        self._complete = True
        await send({"type": "http.response.body", "body": body, "more_body": False})

    # Metering

    # The events are built with ``model_construct``: every value is the proxy's own, already of
    # the right type, and validating them cost a tenth of a request's time in the proxy.

    def _meta(self) -> EventMeta:
        return EventMeta.model_construct(
            event_id=new_event_id(), occurred_at=utc_now(), trace_id=self._trace_id
        )

    def _start_span(self) -> Span:
        """The request's span, below the caller's ``traceparent`` (not for a request refused
        for its key: it links to nothing)."""
        upstream = self._forwarder.upstream(self._endpoint.provider)
        url = upstream.url(self._endpoint.path) if isinstance(upstream, _Upstream) else None
        caller = _header(self._request_headers, b"traceparent") if self._trace_id else None
        return start_proxy_span(
            self._forwarder.tracer,
            provider=self._endpoint.provider,
            model=self._request.model,
            operation=_OPERATIONS.get(self._endpoint.usage, self._endpoint.usage),
            traceparent=caller,
            server=(url.host, url.port) if url is not None else ("unknown", None),
        )

    def _meter_start(self) -> None:
        self._span = self._start_span()
        payload, self._input = self._input, None
        if payload is not None and self._span.is_recording():
            usage_format = self._endpoint.usage
            self._span.set_attributes(wire_content.request_attributes(usage_format, payload))
            self._output = wire_content.output_recorder(usage_format)
        self._forwarder.metrics.emit(
            RequestStarted.model_construct(
                meta=self._meta(),
                request_id=self.request_id,
                endpoint=self._endpoint.name,
                model=self._request.model,
                is_stream=self._request.is_stream,
            )
        )

    def _meter_end(self, seconds: float) -> None:
        partial = self._started_response and not self._complete
        status, error = self._status, self._error
        if self._disconnected:
            status, error = ForwardStatus.ERROR, "client disconnected"
        elif partial and error is None:
            error = "the answer was not relayed in full"
        if error is not None:
            error = redact(error, self._request_headers, self._credential)
        usage: Usage | None = self._tap.usage
        status_code = self._upstream_status or CLIENT_CLOSED
        if self._output is not None and (output := self._output.output()) is not None:
            self._span.set_attribute(OUTPUT_MESSAGES, output)
        end_proxy_span(
            self._span, status_code=status_code, usage=usage, error=error, error_type=status.value
        )
        self._forwarder.metrics.emit(
            RequestCompleted.model_construct(
                meta=self._meta(),
                request_id=self.request_id,
                status_code=status_code,
                status=status,
                usage=usage,
                latency_ms=round(seconds * 1000),
                error=error,
                partial=partial,
            )
        )
        if error is not None:
            log.info(
                "proxied request failed",
                request_id=self.request_id,
                endpoint=self._endpoint.name,
                status=status.value,
                error=error,
            )


class Refusal(Exchange):
    """A request culm refuses before forwarding it (``status, code, message``): the error
    answer and its metering, as for an upstream culm could not reach. The body is not read."""

    def __init__(
        self,
        forwarder: Forwarder,
        endpoint: Endpoint,
        scope: Scope,
        refusal: tuple[int, str, str],
    ) -> None:
        super().__init__(forwarder, endpoint, scope, b"")
        self._refusal = refusal
        if refusal[0] == 401:  # whoever did not show the key links nothing to a run
            self._trace_id = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        self._meter_start()
        try:
            await self._refuse(send, *self._refusal)
        finally:
            self._meter_end(time.perf_counter() - started)


@dataclass(frozen=True, slots=True)
class _Prepared:
    model: str
    is_stream: bool
    body: bytes  # what goes upstream
    hide_usage_chunk: bool  # the proxy asked for the usage the client did not ask for


def _prepare(endpoint: Endpoint, body: bytes, payload: Any) -> _Prepared:
    """The request as it goes upstream (``payload``: its body decoded): unchanged, except for a
    Chat Completions stream that did not ask for usage; then ``stream_options.include_usage`` is
    added."""
    if not isinstance(payload, dict):
        return _Prepared("", False, body, False)  # the upstream will say what is wrong
    model = payload.get("model")
    model = model if isinstance(model, str) else ""
    stream = payload.get("stream") is True
    if endpoint.usage != "chat" or not stream:
        return _Prepared(model, stream, body, False)
    options = payload.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return _Prepared(model, stream, body, False)
    return _Prepared(model, stream, _with_usage(body, payload, options), True)


def _with_usage(body: bytes, payload: dict[str, Any], options: Any) -> bytes:
    if "stream_options" not in payload:  # splice, so every other byte stays as sent
        opening = body.index(b"{") + 1
        return body[:opening] + b'"stream_options":{"include_usage":true},' + body[opening:]
    payload["stream_options"] = {
        **(options if isinstance(options, dict) else {}),
        "include_usage": True,
    }
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


# The GenAI operation of each usage format (``gen_ai.operation.name``).
_OPERATIONS: Final = {"messages": "chat", "responses": "chat", "none": "list_models"}


def _header(headers: RawHeaders, name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1").strip()
    return None


def _error_body(provider: Provider, code: str, message: str) -> dict[str, Any]:
    """culm's error body in the provider's shape (OpenAI: ``{"error": {"message", "type",
    "param", "code"}}``; Anthropic: ``{"type": "error", "error": {"type", "message"}}``), so its
    SDK reads it as its own; ``type`` is culm's ``code``, which both keep."""
    if provider == "anthropic":
        return {"type": "error", "error": {"type": code, "message": message, "code": code}}
    return {"error": {"message": message, "type": code, "param": None, "code": code}}
