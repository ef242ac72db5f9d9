"""SSE frames of run events, encoded once and shared by every subscriber of a run."""

from __future__ import annotations

from collections import OrderedDict

from culm.domain.events import RunEvent, event_to_json


class FrameCache:
    """An LRU of encoded frames keyed by (run_id, seq): with many subscribers on one run, each
    event is serialized once instead of once per subscriber."""

    def __init__(self, capacity: int = 8192) -> None:
        self._capacity = capacity
        self._frames: OrderedDict[tuple[str, int], tuple[str, bytes]] = OrderedDict()

    def json(self, event: RunEvent) -> str:
        return self._get(event)[0]

    def sse(self, event: RunEvent) -> bytes:
        return self._get(event)[1]

    def _get(self, event: RunEvent) -> tuple[str, bytes]:
        key = (event.run_id, event.seq)
        cached = self._frames.get(key)
        if cached is not None and event.type != "gap":
            return cached
        data = event_to_json(event)
        frame = f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n".encode()
        if event.type != "gap":  # a gap is made per stream; it is not the stored event
            self._frames[key] = (data, frame)
            if len(self._frames) > self._capacity:
                self._frames.popitem(last=False)
        return data, frame
