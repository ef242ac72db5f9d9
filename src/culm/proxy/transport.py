"""The proxy's upstream transport: httpx2's client over a lean HTTP/1.1 connection pool.

The proxy calls its upstream (and the agent loop its models: ``providers.http.model_client``)
through an ``httpx2.AsyncClient`` like the rest of culm, with this transport below it instead
of httpx2's default (httpcore2 on anyio, with the pure-Python h11 parser). Measured on the
proxy's hot path, that default cost about half of culm's CPU per forwarded request: a cancel
scope per read and write, a socket probe of every idle connection before each request, and
h11's state machine. Here:

- each connection is an ``asyncio.Protocol`` whose responses are parsed by ``httptools`` (the C
  parser uvicorn uses), so a response costs a few callbacks;
- idle connections wait in a last-in-first-out list per origin; whether the server closed one
  is what the event loop has already seen (EOF), so taking one needs no system call;
- reads, writes and waits are futures, with ``asyncio.timeout`` only when a timeout is set.

It is HTTP/1.1 only (what the providers' APIs and compatible servers speak to a client that
offers no HTTP/2), ``http`` and ``https``, directly or through an HTTP proxy (``proxies``, as
:func:`urllib.request.getproxies` gives them from ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``
and ``NO_PROXY``): an ``https`` origin through a ``CONNECT`` tunnel, an ``http`` one by sending
the request with its absolute URL to the proxy. httpx2's timeouts apply (``connect``, ``read``,
``write``, ``pool``) and failures are httpx2's exceptions (``ConnectError``, ``ReadTimeout``,
``RemoteProtocolError`` …), so callers cannot tell the difference. A connection is used for one
request at a time and kept for the next only once its response was read to the end and the
server did not ask to close it.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
import weakref
from collections.abc import AsyncIterator, Mapping
from typing import Final

import httptools
import httpx2

# Stop reading from a socket while this much of a response body waits unread.
HIGH_WATER: Final = 256 * 1024
_DEFAULT_PORTS: Final = {b"http": 80, b"https": 443}
# The longest answer head a proxy may give to ``CONNECT``.
MAX_TUNNEL_HEAD: Final = 64 * 1024
Origin = tuple[bytes, bytes, int]


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; the state of the response being read."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._paused = False
        self._write_paused = False
        self.closed = False
        self.error: Exception | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.body = bytearray()
        self.complete = False
        self.keep_alive = False
        self._informational = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's lack the base class

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = httpx2.RemoteProtocolError(f"invalid HTTP response: {exc}")
            self.close()
        if len(self.body) > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is not None and self.error is None:
            self.error = exc
        self._wake()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue and the like: the real answer follows
            self._informational = True
            self.headers = []
            return
        self.status = status
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self.keep_alive = self._parser.should_keep_alive()  # only meaningful right here
        self.complete = True

    # Used by the transport

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, timeout: float | None) -> None:
        """Until more of the response arrived, or the connection closed."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            if timeout is None:
                await self._waiter
            else:
                async with asyncio.timeout(timeout):
                    await self._waiter
        except TimeoutError:
            raise httpx2.ReadTimeout("the upstream sent nothing within the read timeout") from None
        finally:
            self._waiter = None

    async def send(self, data: bytes, timeout: float | None) -> None:
        assert self.transport is not None
        self._reset()
        self.transport.write(data)
        if not self._write_paused:
            return
        self._writable = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._writable
        except TimeoutError:
            raise httpx2.WriteTimeout(
                "the upstream took nothing within the write timeout"
            ) from None
        finally:
            self._writable = None
        if self.closed:
            raise httpx2.WriteError(f"the connection closed while sending: {self.error}")

    def take_body(self) -> bytes:
        data = bytes(self.body)
        self.body.clear()
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    @property
    def reusable(self) -> bool:
        return (
            self.complete
            and not self.closed
            and not self.body
            and self.keep_alive
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Body(httpx2.AsyncByteStream):
    """A response body as it arrives; closing it hands the connection back (or closes it)."""

    def __init__(
        self, pool: AsyncioTransport, connection: _Connection, timeout: float | None
    ) -> None:
        self._pool = pool
        self._connection = connection
        self._timeout = timeout
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        while True:
            if connection.body:
                yield connection.take_body()
            elif connection.complete:
                return
            elif connection.closed:
                if connection.error is not None or _length_given(connection.headers):
                    raise httpx2.RemoteProtocolError(
                        "peer closed connection without sending complete message body"
                    )
                return  # a body delimited by the end of the connection
            else:
                await connection.wait(self._timeout)

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self._pool.release(self._connection)


def _closed_early(connection: _Connection) -> httpx2.HTTPError:
    if isinstance(connection.error, httpx2.HTTPError):
        return connection.error  # the response could not be parsed
    return httpx2.RemoteProtocolError("Server disconnected without sending a response.")


def _length_given(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in headers)


class AsyncioTransport(httpx2.AsyncBaseTransport):
    """httpx2's transport interface over :class:`_Connection` s (see the module docstring).

    ``limits.max_connections`` bounds the connections in use at once (a request waits up to
    the ``pool`` timeout for one), ``limits.max_keepalive_connections`` the idle ones kept per
    origin, ``limits.keepalive_expiry`` how long an idle one is kept.
    """

    def __init__(
        self,
        *,
        limits: httpx2.Limits,
        ssl_context: ssl.SSLContext | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> None:
        self._ssl = ssl_context or httpx2.create_ssl_context(trust_env=False)
        self._proxies = dict(proxies or {})
        self._proxy_of: dict[Origin, _Proxy | None] = {}
        self._max_in_use = limits.max_connections
        self._max_idle = limits.max_keepalive_connections
        self._expiry = (
            limits.keepalive_expiry if limits.keepalive_expiry is not None else float("inf")
        )
        self._idle: dict[Origin, list[_Connection]] = {}
        self._in_use = 0
        self._slot_free: asyncio.Event | None = None
        self._everyone: weakref.WeakSet[_Connection] = weakref.WeakSet()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        timeouts = request.extensions.get("timeout", {})
        url = request.url
        scheme = url.raw_scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx2.UnsupportedProtocol(f"unsupported URL scheme {scheme.decode()!r}")
        if request.method == "HEAD":
            raise httpx2.UnsupportedProtocol("HEAD requests are not supported by this transport")
        origin = (scheme, url.raw_host, url.port or _DEFAULT_PORTS[scheme])
        target, headers = url.raw_path, request.headers.raw
        proxy = self._proxy(origin)
        if proxy is not None and scheme == b"http":  # the proxy's own connection takes it
            origin, target = proxy.origin, str(url).encode("ascii")
            headers = [*headers, *proxy.authorization]
        head = _request_head(request.method.encode(), target, headers)
        body = await request.aread()
        connection = await self._acquire(origin, timeouts)
        try:
            await connection.send(head + body, timeouts.get("write"))
            while not connection.head_done:
                if connection.closed:
                    raise _closed_early(connection)
                await connection.wait(timeouts.get("read"))
        except BaseException:
            connection.close()
            self.release(connection)
            raise
        return httpx2.Response(
            status_code=connection.status,
            headers=connection.headers,
            stream=_Body(self, connection, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def _acquire(self, origin: Origin, timeouts: dict[str, float | None]) -> _Connection:
        await self._wait_for_slot(timeouts.get("pool"))
        self._in_use += 1
        try:
            idle = self._idle.get(origin)
            now = time.monotonic()
            while idle:
                connection = idle.pop()
                if connection.reusable and now - connection.idle_since < self._expiry:
                    return connection
                connection.close()
            return await self._connect(origin, timeouts.get("connect"))
        except BaseException:
            self._free_slot()
            raise

    def _full(self) -> bool:
        return self._max_in_use is not None and self._in_use >= self._max_in_use

    async def _wait_for_slot(self, timeout: float | None) -> None:
        if not self._full():
            return
        try:
            async with asyncio.timeout(timeout):
                while self._full():
                    if self._slot_free is None:
                        self._slot_free = asyncio.Event()
                    await self._slot_free.wait()
        except TimeoutError:
            raise httpx2.PoolTimeout("no upstream connection was free in time") from None

    def _proxy(self, origin: Origin) -> _Proxy | None:
        """The proxy that requests to ``origin`` go through, if any (looked up once)."""
        if origin in self._proxy_of:
            return self._proxy_of[origin]
        scheme, host, port = origin
        found = None
        url = self._proxies.get(scheme.decode()) or self._proxies.get("all")
        if url and not _bypassed(host.decode("ascii").lower(), port, self._proxies.get("no", "")):
            found = _Proxy.parse(url)
        self._proxy_of[origin] = found
        return found

    async def _connect(self, origin: Origin, timeout: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        hostname = host.decode("ascii")
        tls = scheme == b"https"
        proxy = self._proxy(origin) if tls else None
        try:
            async with asyncio.timeout(timeout):
                if proxy is not None:
                    connection = await self._tunnel(proxy, origin)
                else:
                    _, connection = await loop.create_connection(
                        lambda: _Connection(origin),
                        hostname,
                        port,
                        ssl=self._ssl if tls else None,
                        server_hostname=hostname if tls else None,
                    )
        except TimeoutError:
            raise httpx2.ConnectTimeout(f"connecting to {hostname}:{port} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx2.ConnectError(str(exc) or type(exc).__name__) from exc
        self._everyone.add(connection)
        return connection

    async def _tunnel(self, proxy: _Proxy, origin: Origin) -> _Connection:
        """A TLS connection to ``origin`` through a ``CONNECT`` tunnel of ``proxy``."""
        _, host, port = origin
        loop = asyncio.get_running_loop()
        _, proxy_host, proxy_port = proxy.origin
        raw, tunnel = await loop.create_connection(_Tunnel, proxy_host.decode("ascii"), proxy_port)
        try:
            authority = b"%s:%d" % (host, port)
            head = [(b"host", authority), *proxy.authorization]
            raw.write(_request_head(b"CONNECT", authority, head))
            status_line = await tunnel.answer()
            parts = status_line.split(b" ", 2)
            if len(parts) < 2 or not parts[1].startswith(b"2"):
                raise httpx2.ProxyError(
                    f"the proxy refused the tunnel to {authority.decode()}: "
                    f"{status_line.decode('latin-1')}"
                )
            connection = _Connection(origin)
            tls = await loop.start_tls(raw, connection, self._ssl, server_hostname=host.decode())
        except BaseException:
            raw.close()
            raise
        assert tls is not None
        connection.connection_made(tls)
        return connection

    def release(self, connection: _Connection) -> None:
        """The response is done with ``connection``: keep it for the next request, or close it."""
        self._free_slot()
        if connection.reusable:
            idle = self._idle.setdefault(connection.origin, [])
            connection.idle_since = time.monotonic()
            idle.append(connection)
            while self._max_idle is not None and len(idle) > self._max_idle:
                idle.pop(0).close()
            now = connection.idle_since
            while idle and now - idle[0].idle_since >= self._expiry:
                idle.pop(0).close()  # the oldest idle ones first
        else:
            connection.close()

    def _free_slot(self) -> None:
        self._in_use -= 1
        if self._slot_free is not None:
            self._slot_free.set()
            self._slot_free = None

    async def aclose(self) -> None:
        for connection in self._everyone:
            connection.close()
        self._everyone.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports finish closing


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` (``no_proxy``) names ``host``: ``*``, the host, a domain it is in
    (``example.com`` or ``.example.com``), each optionally with ``:port``."""
    for entry in no_proxy.lower().split(","):
        name, _, only_port = entry.strip().lstrip(".").partition(":")
        if name == "*":
            return True
        if not name or (only_port and only_port != str(port)):
            continue
        if host == name or host.endswith("." + name):
            return True
    return False


class _Proxy:
    """An HTTP proxy: where it is, and its credentials (from the URL's user:password)."""

    def __init__(self, origin: Origin, authorization: list[tuple[bytes, bytes]]) -> None:
        self.origin = origin
        self.authorization = authorization

    @classmethod
    def parse(cls, url: str) -> _Proxy:
        parsed = httpx2.URL(url if "://" in url else f"http://{url}")
        if parsed.raw_scheme != b"http":
            raise httpx2.UnsupportedProtocol(
                f"only http:// proxies are supported, not {parsed.scheme}:// "
                f"({parsed.copy_with(username=None, password=None)})"
            )
        authorization = []
        if parsed.username or parsed.password:
            user = f"{parsed.username}:{parsed.password}".encode()
            authorization.append((b"proxy-authorization", b"Basic " + base64.b64encode(user)))
        return cls((b"http", parsed.raw_host, parsed.port or 80), authorization)


class _Tunnel(asyncio.Protocol):
    """A connection to a proxy until it answered ``CONNECT`` (its head only)."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._answered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self._head += data
        if b"\r\n\r\n" in self._head and not self._answered.done():
            self._answered.set_result(bytes(self._head.split(b"\r\n", 1)[0]))
        elif len(self._head) > MAX_TUNNEL_HEAD and not self._answered.done():
            self._answered.set_exception(httpx2.ProxyError("the proxy's answer is too long"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._answered.done():
            self._answered.set_exception(
                httpx2.ProxyError(f"the proxy closed the connection ({exc or 'no answer'})")
            )

    async def answer(self) -> bytes:
        """The status line of the proxy's answer."""
        return await self._answered


def _request_head(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [b"%s %s HTTP/1.1" % (method, target)]
    for name, value in headers:
        if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
            raise httpx2.LocalProtocolError("a header name or value contains a line break")
        lines.append(name + b": " + value)
    return b"\r\n".join(lines) + b"\r\n\r\n"
