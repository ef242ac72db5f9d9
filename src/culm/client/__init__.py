"""A client for culm's HTTP API: :class:`Client` (async) and :class:`SyncClient`, typed with the
server's own models; run event streams resume by themselves (see :mod:`culm.client.base`).
The ``culm`` CLI's commands that talk to a server use it too."""

from culm.client.aio import Client
from culm.client.base import DEFAULT_SERVER, StreamEvent
from culm.client.errors import (
    APIError,
    NotFound,
    ServerUnreachable,
    Unauthorized,
    WaitTimeout,
)
from culm.client.sync import SyncClient

__all__ = [
    "DEFAULT_SERVER",
    "APIError",
    "Client",
    "NotFound",
    "ServerUnreachable",
    "StreamEvent",
    "SyncClient",
    "Unauthorized",
    "WaitTimeout",
]
