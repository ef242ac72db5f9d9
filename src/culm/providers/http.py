"""HTTP plumbing shared by the adapters: open an event stream, and turn failures into culm errors.

Status mapping (the provider's own error message is always kept in the exception's text):

    401, 403            ModelAuthError      names the key's environment variable
    400, 404, 413, 422  ModelRequestError
    anything else       ModelHTTPError      429 and 5xx are retryable; ``retry_after`` from
                                            ``retry-after-ms`` or ``Retry-After`` (seconds or date)

Transport failures (refused connection, reset, a body cut short) become ModelConnectionError.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

import httpx2
import pydantic_core

from culm.errors import (
    ModelAuthError,
    ModelConnectionError,
    ModelHTTPError,
    ModelRequestError,
    ModelStallError,
    describe,
)
from culm.providers.base import ModelInfo
from culm.providers.catalog import ProviderConfig
from culm.providers.sse import SSEEvent, aiter_sse
from culm.proxy.transport import AsyncioTransport

_REQUEST_ERROR_STATUSES: Final = frozenset({400, 404, 413, 422})

# Error ``type`` / ``code`` names of both wire formats, for errors that arrive inside a stream
# (where the HTTP status was already 200).
_ERROR_TYPE_STATUS: Final[Mapping[str, int]] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "api_error": 500,
    "server_error": 500,
    "overloaded_error": 529,
}

# No read timeout: the agent loop bounds the wait for each chunk (``stream_idle_timeout``).
DEFAULT_TIMEOUT: Final = httpx2.Timeout(None, connect=10.0)


def model_client(max_connections: int) -> httpx2.AsyncClient:
    """The client every model call goes through: one pool of keep-alive connections per
    provider, as many kept idle as may be open (the library's default keeps 20, so a burst of
    runs past that opened a new connection per model call)."""
    limits = httpx2.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    # The proxy's transport (asyncio protocols, httptools), not httpx2's default (httpcore2 on
    # anyio, h11): half the CPU per streamed read, one read per token (docs/benchmarks.md,
    # peers). The environment's CA bundle and proxies, as httpx2 would take them.
    return httpx2.AsyncClient(
        timeout=DEFAULT_TIMEOUT,
        transport=AsyncioTransport(
            limits=limits,
            ssl_context=httpx2.create_ssl_context(trust_env=True),
            proxies=urllib.request.getproxies(),
        ),
        trust_env=False,
    )


# How long to keep reading after the final event so the connection can return to the pool.
DRAIN_SECONDS: Final = 1.0


@contextlib.asynccontextmanager
async def open_event_stream(
    client: httpx2.AsyncClient,
    config: ProviderConfig,
    url: str,
    *,
    body: dict[str, Any],
    headers: Mapping[str, str],
    timeouts: httpx2.Timeout,
) -> AsyncGenerator[AsyncIterator[SSEEvent], None]:
    """POST ``body`` and yield the response's events.

    HTTP errors raise before anything is yielded; transport errors while reading raise
    :class:`ModelConnectionError`. The response is always closed; when the caller leaves the
    block normally, the rest of the body is read first (briefly) to keep the connection.
    """
    with transport_errors(config, url):
        async with client.stream(
            "POST", url, json=body, headers=headers, timeout=timeouts
        ) as response:
            await raise_for_status(config, response)
            chunks = response.aiter_bytes()
            events = aiter_sse(chunks)
            try:
                yield events
                await _drain(events)
            finally:
                await events.aclose()
                await chunks.aclose()


async def _drain(events: AsyncIterator[SSEEvent]) -> None:
    with contextlib.suppress(TimeoutError, httpx2.RequestError):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in events:
                pass


@contextlib.contextmanager
def transport_errors(config: ProviderConfig, url: str) -> Iterator[None]:
    """Turn httpx2's request errors into culm's model errors."""
    try:
        yield
    except (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout) as exc:
        raise ModelConnectionError(
            f"cannot connect to {config.name} at {url}: {describe(exc)}"
        ) from exc
    except httpx2.ReadTimeout as exc:
        raise ModelStallError(f"{config.name} sent nothing within the read timeout") from exc
    except httpx2.RequestError as exc:
        raise ModelConnectionError(f"connection to {config.name} failed: {describe(exc)}") from exc


async def raise_for_status(config: ProviderConfig, response: httpx2.Response) -> None:
    """Raise the fitting culm error for an error response (or a 2xx that is not a stream)."""
    status = response.status_code
    is_json = response.headers.get("content-type", "").startswith("application/json")
    if 200 <= status < 300 and not is_json:
        return
    body = await response.aread()
    if status >= 300:
        message = provider_message(body)
        if "location" in response.headers:  # redirects are not followed: say where to
            message += f" (redirected to {response.headers['location']})"
        raise http_error(config, status, message, parse_retry_after(response.headers))
    payload = json_or_none(body)
    if isinstance(payload, dict) and payload.get("error"):
        raise error_from_payload(config, payload)
    raise ModelHTTPError(
        f"{config.name} answered HTTP {status} with JSON instead of an event stream: "
        f"{provider_message(body)}",
        status=status,
    )


def http_error(
    config: ProviderConfig, status: int, message: str, retry_after: float | None = None
) -> ModelHTTPError:
    """The culm exception for an HTTP error ``status`` with the provider's ``message``."""
    text = f"{config.name} API error (HTTP {status}): {message}"
    if status in (401, 403):
        if config.key is None:
            cause = f"{config.key_env} is not set"
        elif status == 401:
            cause = f"the key in {config.key_env} was rejected"
        else:
            cause = f"the key in {config.key_env} is not allowed to do this"
        return ModelAuthError(f"{text} ({cause})", status=status, retry_after=retry_after)
    if status in _REQUEST_ERROR_STATUSES:
        return ModelRequestError(text, status=status, retry_after=retry_after)
    return ModelHTTPError(text, status=status, retry_after=retry_after)


def error_from_payload(config: ProviderConfig, payload: Mapping[str, Any]) -> ModelHTTPError:
    """The culm exception for an error object sent inside a stream (either wire format)."""
    error = payload.get("error")
    if not isinstance(error, Mapping):
        return http_error(config, 500, _payload_message(payload) or "unknown error")
    return http_error(config, _error_status(error), _payload_message(payload) or "unknown error")


def _error_status(error: Mapping[str, Any]) -> int:
    code = error.get("code")
    if isinstance(code, int) and 400 <= code <= 599:
        return code
    for key in ("type", "code"):
        status = _ERROR_TYPE_STATUS.get(str(error.get(key)))
        if status is not None:
            return status
    return 500


def provider_message(body: bytes) -> str:
    """The provider's own error message from an error body (JSON or not)."""
    text = body.decode("utf-8", errors="replace").strip()
    message = _payload_message(json_or_none(body))
    if message:
        return message
    return " ".join(text.split())[:500] or "(empty body)"


def json_or_none(body: bytes) -> Any:
    """``body`` decoded as JSON, or ``None`` when it is not JSON."""
    try:
        return json.loads(body)
    except ValueError:
        return None


def _payload_message(payload: Any) -> str | None:
    """``{"error": {"message": …}}`` (OpenAI, Anthropic), ``{"error": "…"}`` (Ollama),
    ``{"detail": "…"}`` or ``{"message": "…"}`` (other compatible servers)."""
    if not isinstance(payload, Mapping):
        return None
    for candidate in (payload.get("error"), payload):
        if isinstance(candidate, str) and candidate:
            return candidate
        if isinstance(candidate, Mapping):
            for key in ("message", "detail"):
                value = candidate.get(key)
                if isinstance(value, str) and value:
                    return value
    return None


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    millis = _non_negative(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _non_negative(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _non_negative(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _loads(data: str) -> Any:
    """``json.loads(data)``, through pydantic-core's parser first (half the cost of a streamed
    chunk's); what it refuses (a lone surrogate such as half of an emoji split between two
    chunks, which ``json`` accepts) or what is not JSON goes through ``json``, which decides."""
    try:
        return pydantic_core.from_json(data)
    except ValueError:
        return json.loads(data)


def load_event_json(config: ProviderConfig, event: SSEEvent) -> dict[str, Any]:
    """Decode an event's JSON object; malformed data counts as a broken connection."""
    try:
        payload = _loads(event.data)
    except ValueError as exc:
        raise ModelConnectionError(
            f"{config.name} sent malformed stream data: {event.data[:200]!r}"
        ) from exc
    if not isinstance(payload, dict):
        raise ModelConnectionError(f"{config.name} sent a non-object event: {event.data[:200]!r}")
    return payload


class HTTPModel:
    """What every HTTP-backed model has: its provider's configuration, the shared client, the
    model's known limits, and a timeout. The wire-format adapters subclass it."""

    def __init__(
        self,
        *,
        model: str,
        config: ProviderConfig,
        client: httpx2.AsyncClient,
        info: ModelInfo | None = None,
        timeout: httpx2.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self.model = model
        self._config = config
        self._client = client
        self._info = info or ModelInfo()
        self._timeout = timeout

    @property
    def name(self) -> str:
        return f"{self._config.name}:{self.model}"

    @property
    def max_context_tokens(self) -> int | None:
        return self._info.max_context_tokens
