"""A small client for culm's HTTP API (v1), for the commands that talk to ``culm serve``.

The server is ``--server URL`` (env ``CULM_SERVER``, default ``http://127.0.0.1:8420``); when
``CULM_API_KEY`` is set it is sent as a bearer token. Every failure becomes a
:class:`~culm.errors.UserError` whose message is meant to be shown as it is (one line):

    ServerUnreachable   the server cannot be reached, or the connection broke
    APIError            the server answered with an error; the message is the server's own
    ├── Unauthorized    401: names CULM_API_KEY
    ├── NotFound        404: an unknown run or session id
    └── WaitTimeout     408: a wait ran out of time; ``run`` is the run as it was then

:meth:`Client.run_events` follows a run's SSE stream across dropped connections: it reconnects
with ``Last-Event-ID`` (backoff 0.2 s doubling to 5 s) and yields every ``seq`` once, in order.

httpx2 is imported only when a :class:`Client` is made, so that ``culm --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final, NamedTuple, Self

import typer

from culm.errors import UserError, describe

if TYPE_CHECKING:
    import httpx2

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
# A refresh may start an MCP server: its handshake and listing may take the server's 30 s each.
REFRESH_TIMEOUT: Final = 75.0
# A manual compaction waits for the summarizer model (a long conversation, a slow model).
COMPACT_TIMEOUT: Final = 300.0
FIRST_RETRY_DELAY: Final = 0.2
MAX_RETRY_DELAY: Final = 5.0
TERMINAL_TYPES: Final = frozenset({"complete", "cancelled", "error"})
TERMINAL_STATUSES: Final = frozenset({"completed", "cancelled", "error"})

ServerOption = Annotated[
    str,
    typer.Option(
        "--server",
        envvar=SERVER_ENV,
        help="The culm server's URL.",
        show_envvar=True,
    ),
]

Json = dict[str, Any]
Param = str | int | float | None


class ServerUnreachable(UserError):
    """No answer from the server: refused, timed out, or the connection broke."""


class APIError(UserError):
    """The server answered with an error status; the message is the server's."""

    def __init__(self, message: str, *, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Unauthorized(APIError):
    pass


class NotFound(APIError):
    pass


class WaitTimeout(APIError):
    def __init__(self, message: str, *, status: int, code: str, run: Json) -> None:
        super().__init__(message, status=status, code=code)
        self.run = run


class StreamEvent(NamedTuple):
    """One run event from a stream: its ``seq``, ``type`` and the whole event as JSON."""

    seq: int
    type: str
    data: Json


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


def unreachable_message(base_url: str) -> str:
    return f"cannot reach the culm server at {base_url} (is `culm serve` running?)"


RetryNote = Callable[[str], None]


def connect(server: str) -> Client:
    """A client for ``server`` with the API key from ``CULM_API_KEY`` or ``config.toml``."""
    if not server.startswith(("http://", "https://")):
        raise UserError(f"invalid server URL {server!r}: expected http://HOST:PORT")
    return Client(server, api_key=os.environ.get(API_KEY_ENV) or _configured_key())


def _configured_key() -> str | None:
    """The key of ``$CULM_HOME/config.toml``, as the server on this machine would read it."""
    from culm.settings import load_settings

    key = load_settings().api_key
    return key.get_secret_value() if key is not None else None


class Client:
    """The v1 routes the CLI needs. Use it as ``async with``; it closes its connections."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        import httpx2

        self.base_url = base_url.rstrip("/")
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
        await self._http.aclose()

    # Routes

    async def list_sessions(self, *, limit: int = 100) -> list[Json]:
        body = await self._request("GET", "/v1/sessions", params={"limit": limit})
        return list(body["sessions"])

    async def list_runs(
        self, *, status: str | None = None, session_id: str | None = None, limit: int = 100
    ) -> list[Json]:
        params: dict[str, Param] = {"status": status, "session_id": session_id, "limit": limit}
        body = await self._request("GET", "/v1/runs", params=params)
        return list(body["runs"])

    async def get_run(self, run_id: str) -> Json:
        return await self._request("GET", f"/v1/runs/{run_id}", missing=("run", run_id))

    async def cancel_run(self, run_id: str, *, wait: bool = False, timeout: float = 30) -> Json:
        """Cancel (idempotent); with ``wait``, the run once terminal or :class:`WaitTimeout`."""
        params: dict[str, Param] = {"wait": "true" if wait else "false", "timeout": timeout}
        return await self._request(
            "POST",
            f"/v1/runs/{run_id}/cancel",
            params=params,
            timeout=timeout + WAIT_MARGIN if wait else None,
            missing=("run", run_id),
        )

    async def pending_input(self, run_id: str) -> list[Json]:
        """The open input requests of the run and of its sub-agents (each names its run)."""
        body = await self._request("GET", f"/v1/runs/{run_id}/input", missing=("run", run_id))
        return list(body["requests"])

    async def answer_input(self, run_id: str, answer: Json) -> Json:
        return await self._request(
            "POST", f"/v1/runs/{run_id}/input", body=answer, missing=("run", run_id)
        )

    async def compact_session(self, session_id: str) -> Json:
        """Compact the session's context now (a summarizer call may take a while)."""
        return await self._request(
            "POST",
            f"/v1/sessions/{session_id}/compact",
            timeout=COMPACT_TIMEOUT,
            missing=("session", session_id),
        )

    async def list_workers(self, *, include_stopped: bool = False) -> Json:
        """``{"workers": […], "queue": {…}}``: the processes that execute runs, and the queue."""
        params: dict[str, Param] = {"include_stopped": "true" if include_stopped else None}
        return await self._request("GET", "/v1/workers", params=params)

    async def list_mcp_servers(self) -> list[Json]:
        body = await self._request("GET", "/v1/mcp/servers")
        return list(body["servers"])

    async def refresh_mcp_server(self, name: str, *, session_id: str | None = None) -> Json:
        """List the server's tools again, or reconnect it; the server's status once done."""
        return await self._request(
            "POST",
            f"/v1/mcp/servers/{name}/refresh",
            params={"session_id": session_id},
            timeout=REFRESH_TIMEOUT,
        )

    async def metrics(self, report: str, **params: Param) -> Json:
        """``GET /v1/metrics/<report>`` (``summary``, ``models``, ``tools``, ``daily`` …)."""
        return await self._request("GET", f"/v1/metrics/{report}", params=params)

    async def list_schedules(self, *, limit: int = 100) -> list[Json]:
        body = await self._request("GET", "/v1/schedules", params={"limit": limit})
        return list(body["schedules"])

    async def get_schedule(self, schedule_id: str) -> Json:
        path = f"/v1/schedules/{schedule_id}"
        return await self._request("GET", path, missing=("schedule", schedule_id))

    async def create_schedule(self, schedule: Json) -> Json:
        return await self._request("POST", "/v1/schedules", body=schedule)

    async def update_schedule(self, schedule_id: str, change: Json) -> Json:
        path = f"/v1/schedules/{schedule_id}"
        return await self._request("PATCH", path, body=change, missing=("schedule", schedule_id))

    async def delete_schedule(self, schedule_id: str) -> None:
        path = f"/v1/schedules/{schedule_id}"
        await self._request("DELETE", path, missing=("schedule", schedule_id))

    async def trigger_schedule(self, schedule_id: str) -> Json:
        """Fire now; the fire as it then is (``running`` with its ``run_id``, or not)."""
        path = f"/v1/schedules/{schedule_id}/trigger"
        return await self._request("POST", path, missing=("schedule", schedule_id))

    async def schedule_runs(self, schedule_id: str, *, limit: int = 100) -> list[Json]:
        path = f"/v1/schedules/{schedule_id}/runs"
        body = await self._request(
            "GET", path, params={"limit": limit}, missing=("schedule", schedule_id)
        )
        return list(body["runs"])

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
        return APIError(message, status=status, code=code)

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
            run = await self.get_run(run_id)
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
