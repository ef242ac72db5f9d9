"""Run events over the wire: SSE responses and the WebSocket loop.

Both race the event source against the client going away and against server shutdown, so a
gone client frees its subscription at once and a stopping server ends every stream cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Sequence

import anyio
from fastapi import Request, WebSocket
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.websockets import WebSocketDisconnect, WebSocketState

from culm.api.encoding import FrameCache
from culm.domain.events import RunEvent, is_terminal
from culm.errors import NotFoundError
from culm.services import Engine

# How long a WebSocket without ``?after=`` waits for the client's first frame (its cursor):
# long enough for a slow link, since a cursor that came later could not be honoured.
FIRST_FRAME_WAIT = 5.0
LATE_CURSOR = (
    f"a cursor frame must come first, within {FIRST_FRAME_WAIT:g} s of connecting; this one "
    "came after the stream had begun (or put ?after=N on the URL)"
)
MAX_SEQ = 2**63 - 1  # the widest cursor taken; one past every stored seq reads nothing


def sse_response(
    request: Request, batches: AsyncGenerator[Sequence[RunEvent]], shutdown: anyio.Event
) -> EventSourceResponse:
    """An SSE response writing each batch of ready events to the client at once."""
    frames: FrameCache = request.app.state.frames
    ping: float = request.app.state.ping_seconds
    grace: float = request.app.state.shutdown_grace

    async def content() -> AsyncGenerator[bytes]:
        async with contextlib.aclosing(batches) as stream:
            async for batch in stream:
                yield b"".join(frames.sse(event) for event in batch)

    return EventSourceResponse(
        content(),
        ping=ping,
        sep="\n",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        ping_message_factory=lambda: ServerSentEvent(comment="ping", sep="\n"),
        shutdown_event=shutdown,
        shutdown_grace_period=grace,  # time for the stream to end by itself, cleanly
    )


async def one_by_one(events: AsyncGenerator[RunEvent]) -> AsyncGenerator[Sequence[RunEvent]]:
    async with contextlib.aclosing(events) as stream:
        async for event in stream:
            yield (event,)


async def websocket_stream(
    websocket: WebSocket, engine: Engine, shutdown: anyio.Event, run_id: str
) -> None:
    await websocket.accept()
    try:
        await engine.check_run(run_id)
        after = await _first_cursor(websocket)
    except (NotFoundError, ValueError) as exc:
        code = "not_found" if isinstance(exc, NotFoundError) else "invalid_request"
        await websocket.send_text(json.dumps({"error": {"code": code, "message": str(exc)}}))
        await websocket.close(code=4404 if code == "not_found" else 1008)
        return
    except WebSocketDisconnect:
        return
    frames: FrameCache = websocket.app.state.frames
    sender = asyncio.create_task(_send_events(websocket, engine, frames, run_id, after))
    receiver = asyncio.create_task(_until_disconnect(websocket))
    stopper = asyncio.create_task(shutdown.wait())
    tasks = {sender, receiver, stopper}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if websocket.client_state is WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await websocket.close(code=1000 if sender.done() else 1001)


async def _first_cursor(websocket: WebSocket) -> int:
    """``?after=N`` (the stream begins at once), else the client's first frame: ``{"after":
    N}`` or ``{}`` (from the start); without a frame within ``FIRST_FRAME_WAIT``, from the
    start."""
    query = websocket.query_params.get("after")
    if query is not None:
        return _non_negative(query)
    try:
        async with asyncio.timeout(FIRST_FRAME_WAIT):
            text = await websocket.receive_text()
    except TimeoutError:
        return 0
    try:
        frame = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError('the first frame must be JSON: {"after": N}') from None
    if not isinstance(frame, dict) or set(frame) - {"after"}:
        raise ValueError('the first frame must be {"after": N}')
    return _non_negative(frame.get("after", 0))


def _non_negative(value: object) -> int:
    text = str(value)
    shown = repr(value) if len(text) <= 40 else f"{text[:20]}… ({len(text)} characters)"
    if isinstance(value, bool) or not isinstance(value, int | str) or not text.isascii():
        raise ValueError(f"after must be a non-negative integer, got {shown}")
    if not text.isdigit() or len(text) > len(str(MAX_SEQ)) or int(text) > MAX_SEQ:
        raise ValueError(f"after must be an integer from 0 to {MAX_SEQ}, got {shown}")
    return int(text)


async def _send_events(
    websocket: WebSocket, engine: Engine, frames: FrameCache, run_id: str, after: int
) -> None:
    async with contextlib.aclosing(engine.subscribe(run_id, after=after)) as events:
        async for event in events:
            await websocket.send_text(frames.json(event))
            if is_terminal(event):
                return


async def _until_disconnect(websocket: WebSocket) -> None:
    """Wait for the client to go; a cursor frame now is refused (1008) rather than ignored."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if _is_cursor(message.get("text")):
            error = {"error": {"code": "invalid_request", "message": LATE_CURSOR}}
            await websocket.send_text(json.dumps(error))
            await websocket.close(code=1008)
            return


def _is_cursor(text: str | None) -> bool:
    try:
        frame = json.loads(text or "")
    except json.JSONDecodeError:
        return False
    return isinstance(frame, dict) and "after" in frame
