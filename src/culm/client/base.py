"""The client's plumbing: requests, errors, and run event streams that resume by themselves.

A stream (:meth:`BaseClient.run_events`) follows a run's SSE across dropped connections and
server restarts: it reconnects with ``Last-Event-ID`` (backoff 0.2 s doubling to 5 s) and
yields every ``seq`` once, in order. httpx2 is imported only when a client is made, so that
``import culm`` and ``culm --help`` stay fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Self

from culm.client.errors import (
    APIError,
    Json,
    NotFound,
    ServerUnreachable,
    Unauthorized,
    WaitTimeout,
    unreachable_message,
)
from culm.errors import UserError, describe

if TYPE_CHECKING:
    import httpx2

    from culm.domain.events import RunEvent
    from culm.providers.sse import SSEEvent

DEFAULT_SERVER: Final = "http://127.0.0.1:8420"
SERVER_ENV: Final = "CULM_SERVER"
API_KEY_ENV: Final = "CULM_API_KEY"

CONNECT_TIMEOUT: Final = 5.0
REQUEST_TIMEOUT: Final = 30.0
# The server sends a ping every 15 s: a stream silent for this long is dead, so reconnect.
STREAM_IDLE_TIMEOUT: Final = 45.0
# How much longer than the server's own wait a waiting request may take.
WAIT_MARGIN: Final = 10.0
FIRST_RETRY_DELAY: Final = 0.2
MAX_RETRY_DELAY: Final = 5.0
TERMINAL_TYPES: Final = frozenset({"complete", "cancelled", "error"})
TERMINAL_STATUSES: Final = frozenset({"completed", "cancelled", "error"})

Param = str | int | float | None


def server_url(base_url: str | None = None) -> str:
    """``base_url``, else ``CULM_SERVER``, else the default; checked."""
    url = base_url or os.environ.get(SERVER_ENV) or DEFAULT_SERVER
    if not url.startswith(("http://", "https://")):
        raise UserError(f"invalid server URL {url!r}: expected http://HOST:PORT")
    return url


def configured_key() -> str | None:
    """``CULM_API_KEY``, else the key of ``$CULM_HOME/config.toml`` (as the server on this
    machine would read it)."""
    from culm.settings import load_settings

    if os.environ.get(API_KEY_ENV):
        return os.environ[API_KEY_ENV]
    key = load_settings().api_key
    return key.get_secret_value() if key is not None else None


class StreamEvent(NamedTuple):
    """One run event from a stream: its ``seq``, ``type`` and the whole event as JSON."""

    seq: int
    type: str
    data: Json

    @property
    def event(self) -> RunEvent | None:
        """The event as culm's own type (None for a type this version of culm does not know)."""
        from pydantic import ValidationError

        from culm.domain.events import event_from_dict

        try:
            return event_from_dict(self.data)
        except ValidationError:
            return None


class _Dropped(Exception):
    """The stream broke in a way worth reconnecting after. ``error`` is what to raise instead
    when it was the first connection (nothing to resume)."""

    def __init__(self, message: str, error: UserError) -> None:
        super().__init__(message)
        self.error = error

    @classmethod
    def unreachable(cls, base_url: str) -> _Dropped:
        message = unreachable_message(base_url)
        return cls(message, ServerUnreachable(message))


@dataclass
class _Follow:
    """Where a followed stream stands: the last ``seq`` seen and the next retry's delay."""

    cursor: int
    connected: bool = False
    delay: float = FIRST_RETRY_DELAY

    def advance(self, seq: int) -> None:
        self.cursor, self.delay = seq, FIRST_RETRY_DELAY

    def back_off(self) -> None:
        self.delay = min(self.delay * 2, MAX_RETRY_DELAY)


RetryNote = Callable[[str], None]


class BaseClient:
    """Requests to a culm server. ``base_url`` defaults to ``CULM_SERVER`` (else
    ``http://127.0.0.1:8420``), ``api_key`` to ``CULM_API_KEY`` or config.toml's (pass
    ``api_key=""`` for none). Use it as ``async with``; it closes its connections."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        import httpx2

        api_key = configured_key() if api_key is None else api_key or None
        self.base_url = server_url(base_url).rstrip("/")
        self._has_key = api_key is not None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx2.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx2.Timeout(REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT),
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # Plumbing

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Param] | None = None,
        timeout: float | None = None,
        missing: tuple[str, str] | None = None,
        body: Json | None = None,
    ) -> Json:
        import httpx2

        query = {key: value for key, value in (params or {}).items() if value is not None}
        timeouts = httpx2.Timeout(timeout or REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT)
        with self._transport_errors():
            response = await self._http.request(
                method, path, params=query, json=body, timeout=timeouts
            )
        if response.is_error:
            raise self._api_error(response.status_code, response.content, missing)
        if response.status_code == 204:
            return {}
        answer: Json = response.json()
        return answer

    @contextlib.contextmanager
    def _transport_errors(self) -> Iterator[None]:
        import httpx2

        try:
            yield
        except (httpx2.ConnectError, httpx2.ConnectTimeout) as exc:
            raise ServerUnreachable(unreachable_message(self.base_url)) from exc
        except httpx2.TimeoutException as exc:
            raise ServerUnreachable(
                f"the culm server at {self.base_url} did not answer in time"
            ) from exc
        except httpx2.TransportError as exc:
            raise ServerUnreachable(
                f"lost the connection to the culm server at {self.base_url} ({describe(exc)})"
            ) from exc

    def _api_error(self, status: int, content: bytes, missing: tuple[str, str] | None) -> APIError:
        body = _json_or_none(content)
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        code = str(error.get("code") or status)
        message = str(error.get("message") or f"the server at {self.base_url} answered {status}")
        if status == 401:
            return Unauthorized(self._auth_hint(), status=status, code=code)
        if status == 404:
            found = f"{missing[0]} {missing[1]!r} not found" if missing else message
            return NotFound(found, status=status, code=code)
        if status == 408 and isinstance(body, dict) and isinstance(body.get("run"), dict):
            return WaitTimeout(message, status=status, code=code, run=body["run"])
        field = error.get("field")
        return APIError(
            message, status=status, code=code, field=field if isinstance(field, str) else None
        )

    def _auth_hint(self) -> str:
        if self._has_key:
            return f"the server refused the API key in {API_KEY_ENV}"
        return f"the server needs an API key: set {API_KEY_ENV}"

    # The event stream

    async def run_events(
        self, run_id: str, *, after: int = 0, on_retry: RetryNote | None = None
    ) -> AsyncGenerator[StreamEvent]:
        """Every event of the run with ``seq > after``, in order and each once, then live ones;
        ends after the terminal event.

        A broken connection is resumed with ``Last-Event-ID`` (``on_retry`` gets a note each
        time). Only a failure of the first connection, and any 4xx answer, raise.
        """
        follow = _Follow(cursor=after)
        while True:
            try:
                async with contextlib.aclosing(self._stream_once(run_id, follow)) as events:
                    async for event in events:
                        if event.seq <= follow.cursor:
                            continue  # already yielded before a reconnect
                        follow.advance(event.seq)
                        yield event
                        if event.type in TERMINAL_TYPES:
                            return
                if await self._ended(run_id, follow.cursor):
                    return
                reason = "the stream ended before the run did"
            except _Dropped as exc:
                if not follow.connected:
                    raise exc.error from exc
                reason = str(exc)
            if on_retry is not None:
                on_retry(
                    f"{reason}; reconnecting after event {follow.cursor} in {follow.delay:g} s…"
                )
            await asyncio.sleep(follow.delay)
            follow.back_off()

    async def _stream_once(self, run_id: str, follow: _Follow) -> AsyncGenerator[StreamEvent]:
        """One connection's events. A broken connection or a 5xx raises :class:`_Dropped`."""
        import httpx2

        from culm.providers.sse import aiter_sse

        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(follow.cursor)}
        timeouts = httpx2.Timeout(STREAM_IDLE_TIMEOUT, connect=CONNECT_TIMEOUT)
        path = f"/v1/runs/{run_id}/events"
        try:
            async with self._http.stream("GET", path, headers=headers, timeout=timeouts) as resp:
                if resp.is_error:
                    await resp.aread()
                    error = self._api_error(resp.status_code, resp.content, ("run", run_id))
                    if resp.status_code < 500:
                        raise error
                    raise _Dropped(f"the server answered {resp.status_code} ({error})", error)
                follow.connected = True
                async for sse in aiter_sse(resp.aiter_bytes()):
                    yield _stream_event(sse)
        except (httpx2.ConnectError, httpx2.ConnectTimeout) as exc:
            raise _Dropped.unreachable(self.base_url) from exc
        except httpx2.TransportError as exc:
            message = f"the connection broke ({describe(exc)})"
            raise _Dropped(message, ServerUnreachable(f"{message} at {self.base_url}")) from exc

    async def _ended(self, run_id: str, cursor: int) -> bool:
        """After the server closed a stream before the terminal event: is there nothing more
        to come (the run is over and every stored event was seen)? Unsure counts as no."""
        try:
            run = await self._request("GET", f"/v1/runs/{run_id}", missing=("run", run_id))
        except ServerUnreachable:
            return False
        return run.get("status") in TERMINAL_STATUSES and int(run.get("last_seq", 0)) <= cursor


def _stream_event(sse: SSEEvent) -> StreamEvent:
    data = _json_or_none(sse.data.encode())
    if not isinstance(data, dict) or not isinstance(data.get("seq"), int):
        raise UserError(f"the server sent an event that is not a run event: {sse.data[:200]!r}")
    return StreamEvent(seq=data["seq"], type=str(data.get("type", sse.event)), data=data)


def _json_or_none(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return None
