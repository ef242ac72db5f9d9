"""An SSE client that follows runs through the API and keeps every event it saw.

It reads ``/v1/runs/{id}/events`` like a browser would: when the connection breaks or the
server answers an error (a 503 while PostgreSQL is down), it reconnects with ``after=`` the
highest seq it has. It stops at the run's terminal event. What it saw is compared with the
store by the invariant checks (:mod:`tests.distributed.invariants`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx2

from culm.domain.events import TERMINAL_EVENT_TYPES
from tests.api.sse import frames


class Watcher:
    def __init__(self, api_url: str) -> None:
        self._client = httpx2.AsyncClient(base_url=api_url, timeout=httpx2.Timeout(30, read=60))
        self.seen: dict[str, dict[int, dict[str, Any]]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.reconnects = 0
        self.gaps: dict[str, list[dict[str, Any]]] = {}  # the gap events each run's stream had

    def follow(self, run_id: str) -> None:
        self.seen.setdefault(run_id, {})
        self._tasks[run_id] = asyncio.create_task(self._follow(run_id))

    def ended(self, run_id: str) -> bool:
        return any(e["type"] in TERMINAL_EVENT_TYPES for e in self.seen[run_id].values())

    async def _follow(self, run_id: str) -> None:
        seen = self.seen[run_id]
        cursor = 0  # the last seq accounted for: an event seen, or the end of a gap
        while not self.ended(run_id):
            params = {"after": cursor} if cursor else None
            try:
                async with self._client.stream(
                    "GET", f"/v1/runs/{run_id}/events", params=params
                ) as response:
                    if response.status_code == 503:  # the store is down: try again
                        await response.aread()
                        raise httpx2.TransportError("503")
                    assert response.status_code == 200, (response.status_code, run_id)
                    async for frame in frames(response):
                        if frame.comment is not None:
                            continue
                        event = frame.json
                        seq = int(event["seq"])
                        assert frame.id is not None and int(frame.id) == seq, frame
                        assert seq not in seen, f"{run_id}: seq {seq} delivered twice"
                        if event["type"] == "gap":  # seqs lost in a crash, never reused
                            assert event["from_seq"] == cursor + 1, (run_id, event, cursor)
                            assert seq == event["to_seq"] >= event["from_seq"], event
                            self.gaps.setdefault(run_id, []).append(event)
                        else:
                            assert seq == cursor + 1, f"{run_id}: unannounced gap before {seq}"
                            seen[seq] = event
                        cursor = seq
            except httpx2.TransportError:
                self.reconnects += 1
                await asyncio.sleep(0.2)

    async def wait(self, timeout: float) -> None:
        """Until every followed run's stream has ended (its terminal event seen)."""
        async with asyncio.timeout(timeout):
            await asyncio.gather(*self._tasks.values())

    async def aclose(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.aclose()
