"""A TCP proxy whose packets can be made to vanish (no RST: a black-holed host), in front of the
shared Redis or PostgreSQL, for tests of what a silent server does to a client."""

from __future__ import annotations

import asyncio
import contextlib


class BlackHoleProxy:
    """Forwards TCP to ``host:port``; while :attr:`holed`, swallows every byte in both directions.
    ``connections`` counts the connections it accepted, ``forwarded`` the bytes it passed on."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self.holed = False
        self.port = 0
        self.connections = 0
        self.forwarded = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            # wait_closed waits for the handlers, which end as the clients close.

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        server_r, server_w = await asyncio.open_connection(*self._target)
        await asyncio.gather(
            self._pipe(client_r, server_w), self._pipe(server_r, client_w), return_exceptions=True
        )
        for writer in (server_w, client_w):
            writer.close()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                if not self.holed:
                    self.forwarded += len(data)
                    sink.write(data)
                    await sink.drain()
        finally:
            with contextlib.suppress(OSError):
                sink.close()
