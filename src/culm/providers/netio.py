"""The network backend of the model client: httpcore2's anyio backend, but a read without a
read timeout is a plain receive.

httpcore2 wraps every read of the socket in ``anyio.fail_after(timeout)``, also when the
timeout is None (a cancel scope that can never expire, entered and left per read, each time
asking sniffio which event loop runs). The model client has no read timeout (the agent loop
bounds the wait for each chunk itself: ``stream_idle_timeout``), and a streamed answer is one
read per token, so that scope was a sizeable share of the event loop's CPU per streamed token.

Without a timeout the read is the same receive with the same exceptions (``ReadError`` for a
broken or closed stream, ``b""`` at its end); a cancel reaches it as before. Reads with a
timeout, writes, connects and TLS go through httpcore2's own code.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable

import anyio
import anyio.abc
import httpcore2
import httpx2
from httpcore2._backends.anyio import AnyIOStream

SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


class _Stream(AnyIOStream):
    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        super().__init__(stream)
        self._byte_stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if timeout is not None:
            return await super().read(max_bytes, timeout)
        try:
            return await self._byte_stream.receive(max_bytes)
        except anyio.EndOfStream:
            return b""
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise httpcore2.ReadError(exc) from exc
        except TimeoutError as exc:  # as httpcore2 maps it (the socket's own, not a deadline)
            raise httpcore2.ReadTimeout(exc) from exc

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        return _wrap(await super().start_tls(ssl_context, server_hostname, timeout))


def _wrap(stream: httpcore2.AsyncNetworkStream) -> httpcore2.AsyncNetworkStream:
    if type(stream) is AnyIOStream:  # what httpcore2's backend returns; anything else as is
        return _Stream(stream._stream)
    return stream


class ModelNetworkBackend(httpcore2.AnyIOBackend):
    """httpcore2's anyio backend whose streams read without a cancel scope when no read
    timeout is set."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        return _wrap(await super().connect_tcp(host, port, timeout, local_address, socket_options))

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        return _wrap(await super().connect_unix_socket(path, timeout, socket_options))


def use_model_backend(client: httpx2.AsyncClient) -> httpx2.AsyncClient:
    """``client`` with its connections (direct, and to the proxies the environment names)
    opened by :class:`ModelNetworkBackend`. httpx2 takes no backend as an argument (and a
    transport of one's own would turn its environment proxies off), so each pool's backend is
    replaced here, before the client opens any connection."""
    transports = [client._transport, *client._mounts.values()]
    for transport in transports:
        if isinstance(transport, httpx2.AsyncHTTPTransport):
            pool = transport._pool
            assert hasattr(pool, "_network_backend"), "httpcore2's pool changed"
            pool._network_backend = ModelNetworkBackend()
    return client
