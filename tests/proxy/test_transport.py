"""The proxy's asyncio transport for httpx2: real sockets on 127.0.0.1, plain and TLS."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx2
import pytest

from culm.proxy.transport import HIGH_WATER, AsyncioTransport
from tests.proxy.tunnel import http_proxy, self_signed

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
LIMITS = httpx2.Limits(max_connections=10, max_keepalive_connections=10)


@contextlib.asynccontextmanager
async def serving(
    handler: Handler, ssl_context: ssl.SSLContext | None = None, unix_path: str | None = None
) -> AsyncIterator[int]:
    """Serve ``handler`` on an ephemeral port; at the end every connection is closed and every
    handler finished (Python 3.11's ``wait_closed`` does not wait for them)."""
    tasks: set[asyncio.Task[object]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        writers.append(writer)
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await handler(reader, writer)

    if unix_path is not None:
        server = await asyncio.start_unix_server(tracked, unix_path)
    else:
        server = await asyncio.start_server(tracked, "127.0.0.1", 0, ssl=ssl_context)
    try:
        yield 0 if unix_path is not None else server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in writers:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


def upstream_client() -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=AsyncioTransport(limits=LIMITS))


def answering(body: bytes, *, close_after: bool = False) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await _read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            if close_after:
                break
        writer.close()

    return handler


async def test_requests_reuse_one_connection() -> None:
    connections = 0
    inner = answering(b"hello")

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await inner(reader, writer)

    async with serving(handler) as port, upstream_client() as client:
        for _ in range(3):
            response = await client.post(f"http://127.0.0.1:{port}/", content=b"x" * 10)
            assert response.content == b"hello"
    assert connections == 1


async def test_a_connection_the_server_closed_is_not_reused() -> None:
    """The pool asks ``is_readable`` of an idle connection: the EOF the loop has seen."""
    connections = 0
    inner = answering(b"once", close_after=True)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await inner(reader, writer)

    async with serving(handler) as port, upstream_client() as client:
        first = await client.get(f"http://127.0.0.1:{port}/")
        await asyncio.sleep(0.05)  # the server's FIN reaches the idle connection
        second = await client.get(f"http://127.0.0.1:{port}/")
    assert (first.content, second.content) == (b"once", b"once")
    assert connections == 2


async def test_a_large_body_streams_through_with_back_pressure() -> None:
    body = bytes(range(256)) * (4 * HIGH_WATER // 256)
    received = bytearray()
    async with (
        serving(answering(body)) as port,
        upstream_client() as client,
        client.stream("GET", f"http://127.0.0.1:{port}/") as response,
    ):
        async for chunk in response.aiter_raw():
            received += chunk
            await asyncio.sleep(0)  # a slow reader: the socket is paused and resumed
    assert bytes(received) == body


async def test_a_read_timeout_is_httpx2s() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await reader.read()  # answers nothing until the client leaves
        writer.close()

    async with serving(silent) as port, upstream_client() as client:
        with pytest.raises(httpx2.ReadTimeout):
            await client.get(f"http://127.0.0.1:{port}/", timeout=0.2)


async def test_a_connection_cut_mid_body_is_a_read_error() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.close()

    async with serving(cut) as port, upstream_client() as client:
        with pytest.raises(httpx2.RemoteProtocolError):
            await client.get(f"http://127.0.0.1:{port}/")


async def test_connecting_to_a_closed_port_is_a_connect_error() -> None:
    async with serving(answering(b"")) as port:
        pass  # closed again: nothing listens there now
    async with upstream_client() as client:
        with pytest.raises(httpx2.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")


def _self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server, cert_file = self_signed(tmp_path)
    return server, ssl.create_default_context(cafile=str(cert_file))


async def test_https(tmp_path: Path) -> None:
    server_context, client_context = _self_signed(tmp_path)
    transport = AsyncioTransport(limits=LIMITS, ssl_context=client_context)
    async with (
        serving(answering(b"secret"), server_context) as port,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        first = await client.get(f"https://127.0.0.1:{port}/")
        second = await client.get(f"https://127.0.0.1:{port}/")
    assert (first.status_code, first.content, second.content) == (200, b"secret", b"secret")


def replying(raw: bytes) -> Handler:
    """Answer every request with ``raw``, as it is, and keep the connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await _read_request(reader) is not None:
            writer.write(raw)
            await writer.drain()

    return handler


async def test_a_chunked_body_after_an_informational_answer() -> None:
    raw = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    async with serving(replying(raw)) as port, upstream_client() as client:
        for _ in range(2):  # the connection is fit for the next request afterwards
            response = await client.post(f"http://127.0.0.1:{port}/", content=b"{}")
            assert response.status_code == 200
            assert response.content == b"hello world"
            assert response.headers.get_list("x-a") == ["1", "2"]


async def test_a_body_delimited_by_the_end_of_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    async with serving(handler) as port, upstream_client() as client:
        response = await client.get(f"http://127.0.0.1:{port}/")
    assert response.content == b"until the end"


async def test_a_garbled_answer_is_a_protocol_error() -> None:
    async with serving(replying(b"NOT HTTP AT ALL\r\n\r\n")) as port, upstream_client() as client:
        with pytest.raises(httpx2.RemoteProtocolError):
            await client.get(f"http://127.0.0.1:{port}/")


async def test_a_server_that_closes_without_answering() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.close()

    async with serving(handler) as port, upstream_client() as client:
        with pytest.raises(httpx2.RemoteProtocolError, match="without sending a response"):
            await client.get(f"http://127.0.0.1:{port}/")


async def test_the_pool_bounds_connections_in_use() -> None:
    release = asyncio.Event()
    answered = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        while await _read_request(reader) is not None:
            await release.wait()
            answered += 1
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    limits = httpx2.Limits(max_connections=1, max_keepalive_connections=1)
    transport = AsyncioTransport(limits=limits)
    async with serving(handler) as port, httpx2.AsyncClient(transport=transport) as client:
        url = f"http://127.0.0.1:{port}/"
        first = asyncio.create_task(client.get(url))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx2.PoolTimeout):  # the one connection is taken
            await client.get(url, timeout=httpx2.Timeout(5, pool=0.1))
        second = asyncio.create_task(client.get(url))
        release.set()
        assert [(await t).content for t in (first, second)] == [b"ok", b"ok"]
    assert answered == 2


async def test_idle_connections_expire() -> None:
    connections = 0
    inner = answering(b"x")

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await inner(reader, writer)

    limits = httpx2.Limits(max_connections=10, max_keepalive_connections=10, keepalive_expiry=0.05)
    transport = AsyncioTransport(limits=limits)
    async with serving(handler) as port, httpx2.AsyncClient(transport=transport) as client:
        await client.get(f"http://127.0.0.1:{port}/")
        await asyncio.sleep(0.1)
        await client.get(f"http://127.0.0.1:{port}/")
    assert connections == 2


async def test_a_body_left_unread_closes_its_connection() -> None:
    connections = 0
    inner = answering(b"y" * 100_000)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await inner(reader, writer)

    async with serving(handler) as port, upstream_client() as client:
        async with client.stream("GET", f"http://127.0.0.1:{port}/") as response:
            assert response.status_code == 200  # closed without reading the body
        assert (await client.get(f"http://127.0.0.1:{port}/")).content == b"y" * 100_000
    assert connections == 2


async def test_a_header_with_a_line_break_is_refused() -> None:
    async with serving(answering(b"")) as port, upstream_client() as client:
        request = client.build_request("GET", f"http://127.0.0.1:{port}/")
        request.headers._list.append((b"x-evil", b"x-evil", b"a\r\nx-injected: 1"))
        with pytest.raises(httpx2.LocalProtocolError):
            await client.send(request)


# Through an HTTP proxy (HTTPS_PROXY, HTTP_PROXY, NO_PROXY)


async def test_https_through_a_connect_tunnel(tmp_path: Path) -> None:
    server_context, client_context = _self_signed(tmp_path)
    async with serving(answering(b"tunnelled"), server_context) as port, http_proxy() as proxy:
        transport = AsyncioTransport(
            limits=LIMITS, ssl_context=client_context, proxies={"https": proxy.url}
        )
        async with httpx2.AsyncClient(transport=transport) as client:
            first = await client.get(f"https://127.0.0.1:{port}/v1/models")
            second = await client.get(f"https://127.0.0.1:{port}/v1/models")
    assert (first.content, second.content) == (b"tunnelled", b"tunnelled")
    assert proxy.tunnels == [f"127.0.0.1:{port}"]  # one tunnel, kept for the second request


async def test_http_through_a_proxy_and_no_proxy(tmp_path: Path) -> None:
    async with serving(answering(b"plain")) as port, http_proxy() as proxy:
        proxies = {"http": proxy.url, "no": "localhost,.internal.example"}
        transport = AsyncioTransport(limits=LIMITS, proxies=proxies)
        async with httpx2.AsyncClient(transport=transport) as client:
            through = await client.get(f"http://127.0.0.1:{port}/v1/models?x=1")
            direct = await client.get(f"http://localhost:{port}/v1/models")
    assert (through.content, direct.content) == (b"plain", b"plain")
    assert proxy.forwarded == [f"http://127.0.0.1:{port}/v1/models?x=1"]
    assert proxy.tunnels == []


async def test_a_tunnel_the_proxy_refuses_is_a_proxy_error(tmp_path: Path) -> None:
    _, client_context = _self_signed(tmp_path)
    async with http_proxy() as proxy:
        proxy.refuse = True
        transport = AsyncioTransport(
            limits=LIMITS, ssl_context=client_context, proxies={"all": proxy.url}
        )
        async with httpx2.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx2.ProxyError, match="refused the tunnel to 127.0.0.1:9"):
                await client.get("https://127.0.0.1:9/")


async def test_an_unsupported_proxy_is_refused_without_its_credentials() -> None:
    proxies = {"https": "https://user:s3cret@proxy.invalid:3128"}
    transport = AsyncioTransport(limits=LIMITS, proxies=proxies)
    async with httpx2.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx2.UnsupportedProtocol) as refused:
            await client.get("https://127.0.0.1:9/")
    assert "proxy.invalid:3128" in str(refused.value)
    assert "s3cret" not in str(refused.value)
    assert "user" not in str(refused.value)
