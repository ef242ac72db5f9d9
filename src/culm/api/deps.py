"""How routes reach the services: through dependencies, never module globals."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import Depends, Request, WebSocket

from culm.services import Engine


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _shutdown(request: Request) -> anyio.Event:
    event: anyio.Event = request.app.state.shutdown
    return event


def ws_engine(websocket: WebSocket) -> Engine:
    engine: Engine = websocket.app.state.engine
    return engine


def ws_shutdown(websocket: WebSocket) -> anyio.Event:
    event: anyio.Event = websocket.app.state.shutdown
    return event


EngineDep = Annotated[Engine, Depends(_engine)]
ShutdownDep = Annotated[anyio.Event, Depends(_shutdown)]
