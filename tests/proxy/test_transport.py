"""The proxy's asyncio transport for httpx2: real sockets on 127.0.0.1, plain and TLS."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpcore2
import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from culm.proxy.transport import HIGH_WATER, AsyncioBackend, AsyncioTransport

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


async def test_unix_sockets(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    async with serving(answering(b"unix"), unix_path=path):
        stream = await AsyncioBackend().connect_unix_socket(path, timeout=5)
        await stream.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (await stream.read(65536, timeout=5)).endswith(b"unix")
        await stream.aclose()


def _self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


async def test_https_through_start_tls(tmp_path: Path) -> None:
    server_context, client_context = _self_signed(tmp_path)
    async with serving(answering(b"secret"), server_context) as port:
        pool = httpcore2.AsyncConnectionPool(
            ssl_context=client_context, network_backend=AsyncioBackend()
        )
        async with pool:
            response = await pool.request("GET", f"https://127.0.0.1:{port}/")
    assert response.status == 200
    assert response.content == b"secret"
