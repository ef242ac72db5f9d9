"""Clients that follow a run over the wire and reconnect on purpose: each segment reads a few
events over SSE (resuming with ``Last-Event-ID``) or WebSocket (first frame ``{"after": N}``),
then drops the connection, until the run's terminal event. What a client got, end to end, must
equal the stored sequence."""

from __future__ import annotations

import contextlib
import json
import random
from typing import Any

import httpx2
import websockets

from tests.api.sse import frames

TERMINAL = {"complete", "cancelled", "error"}


async def _sse_segment(
    client: httpx2.AsyncClient, run_id: str, after: int, take: int | None
) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    headers = {"Last-Event-ID": str(after)} if after else {}
    async with client.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        async for frame in frames(response):
            if frame.comment is not None:
                continue
            got.append(frame.json)
            if frame.json["type"] in TERMINAL or (take is not None and len(got) >= take):
                break
    return got


async def _ws_segment(
    base_url: str, run_id: str, after: int, take: int | None
) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    url = base_url.replace("http", "ws", 1) + f"/v1/runs/{run_id}/ws"
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"after": after}))
        with contextlib.suppress(websockets.ConnectionClosedOK):
            while True:
                event = json.loads(await ws.recv())
                got.append(event)
                if event["type"] in TERMINAL or (take is not None and len(got) >= take):
                    break
    return got


async def follow(
    client: httpx2.AsyncClient,
    run_id: str,
    *,
    reconnects: int,
    rng: random.Random,
    after: int = 0,
) -> list[dict[str, Any]]:
    """Every event after ``after`` until the terminal one, over ``reconnects`` + 1 connections
    (SSE or WebSocket at random), each cut after a random number of events."""
    got: list[dict[str, Any]] = []
    cursor = after
    left = reconnects
    while not got or got[-1]["type"] not in TERMINAL:
        take = rng.randint(1, 30) if left > 0 else None
        left -= 1
        if rng.random() < 0.5:
            segment = await _sse_segment(client, run_id, cursor, take)
        else:
            segment = await _ws_segment(str(client.base_url), run_id, cursor, take)
        got.extend(segment)
        if segment:
            cursor = segment[-1]["seq"]
    return got
