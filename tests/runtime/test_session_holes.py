"""A session stream that finds a hole in a run's seqs (events the bus lost) reads them from the
store, and reports what the store does not hold either as a ``gap`` (review finding 8): after a
crash a break in the stored seqs is normal, and a session stream shows every event exactly once,
in order, or an explicit gap."""

from __future__ import annotations

from datetime import UTC, datetime

from culm.bus.local import LocalBus
from culm.domain.events import RunEvent, Token
from culm.runtime.streams import Streams


class CrossingBus(LocalBus):
    @property
    def crosses_processes(self) -> bool:
        return True


class StoreWith:
    """Only what ``_fill_holes`` reads: the events a store holds (a crash lost the others)."""

    def __init__(self, events: list[RunEvent]) -> None:
        self.events = events

    async def read_events(
        self, run_id: str, *, after: int = 0, limit: int | None = None
    ) -> list[RunEvent]:
        found = [e for e in self.events if e.run_id == run_id and e.seq > after]
        return found[:limit] if limit is not None else found


def _token(seq: int) -> RunEvent:
    return Token(content=str(seq)).stamped(
        seq=seq, run_id="r", session_id="s", ts=datetime.now(UTC)
    )


def _streams(stored: list[RunEvent]) -> Streams:
    return Streams(StoreWith(stored), None, None, 10, bus=CrossingBus())  # type: ignore[arg-type]


async def test_a_hole_the_store_does_not_fill_is_a_gap() -> None:
    # Seen up to 2; the store holds 4 (3 was lost in a crash); 6 arrives on the bus.
    streams = _streams([_token(4)])
    filled = await streams._fill_holes([_token(6)], {"r": 2}, {"r"})
    assert [(e.type, e.seq) for e in filled] == [("gap", 3), ("token", 4), ("gap", 5), ("token", 6)]
    assert [(e.from_seq, e.to_seq) for e in filled if e.type == "gap"] == [(3, 3), (5, 5)]  # type: ignore[attr-defined]


async def test_a_hole_the_store_fills_has_no_gap() -> None:
    streams = _streams([_token(3), _token(4)])
    filled = await streams._fill_holes([_token(5)], {"r": 2}, {"r"})
    assert [(e.type, e.seq) for e in filled] == [("token", 3), ("token", 4), ("token", 5)]


async def test_a_hole_of_one_event_is_filled() -> None:
    streams = _streams([_token(3)])
    filled = await streams._fill_holes([_token(4)], {"r": 2}, {"r"})
    assert [(e.type, e.seq) for e in filled] == [("token", 3), ("token", 4)]


async def test_an_event_seen_already_is_no_hole() -> None:
    # The bus delivers 3 again (seen up to 3): nothing is read, the stream drops it by seq.
    streams = _streams([_token(4), _token(5)])
    filled = await streams._fill_holes([_token(3)], {"r": 3}, {"r"})
    assert [(e.type, e.seq) for e in filled] == [("token", 3)]
