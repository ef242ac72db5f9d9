"""A minimal SSE reader for tests: frames as they arrive, comments included."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2


@dataclass
class Frame:
    id: str | None = None
    event: str | None = None
    data: str = ""
    comment: str | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.data)


async def frames(response: httpx2.Response) -> AsyncIterator[Frame]:
    frame = Frame()
    async for line in response.aiter_lines():
        if line == "":
            if frame.data or frame.event or frame.id:
                yield frame
            frame = Frame()
        elif line.startswith(":"):
            yield Frame(comment=line[1:].strip())
        else:
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "data":
                frame.data = f"{frame.data}\n{value}" if frame.data else value
            elif key in ("id", "event"):
                setattr(frame, key, value)


async def read_run(
    client: httpx2.AsyncClient, run_id: str, *, after: int | None = None, **headers: str
) -> list[Frame]:
    """Every frame of a run's stream until the server closes it (comments left out)."""
    params = {"after": after} if after is not None else None
    async with client.stream(
        "GET", f"/v1/runs/{run_id}/events", params=params, headers=headers
    ) as response:
        assert response.status_code == 200, await response.aread()
        return [frame async for frame in frames(response) if frame.comment is None]
