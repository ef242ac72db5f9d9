"""What the CLI's server commands share: the ``--server`` option and :func:`connect`, which
makes a :class:`culm.Client` (the one client of culm's HTTP API, :mod:`culm.client`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from culm.client.base import DEFAULT_SERVER, SERVER_ENV, TERMINAL_STATUSES
from culm.client.errors import Json, WaitTimeout

if TYPE_CHECKING:
    from culm.client.aio import Client
    from culm.client.base import StreamEvent

__all__ = [
    "DEFAULT_SERVER",
    "TERMINAL_STATUSES",
    "Client",
    "Json",
    "ServerOption",
    "StreamEvent",
    "WaitTimeout",
    "as_json",
    "connect",
]

ServerOption = Annotated[
    str,
    typer.Option(
        "--server",
        envvar=SERVER_ENV,
        help="The culm server's URL.",
        show_envvar=True,
    ),
]


def connect(server: str) -> Client:
    """A client for ``server`` with the API key from ``CULM_API_KEY`` or ``config.toml``."""
    from culm.client.aio import Client

    return Client(server)


def as_json(value: Any) -> Any:
    """The client's typed answers as the JSON the commands print (lists and tuples of them)."""
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if type(value) in (list, tuple):  # not a NamedTuple (a StreamEvent stays one)
        return type(value)(as_json(item) for item in value)
    return value
