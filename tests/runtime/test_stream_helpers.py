"""The pure helpers of ``culm.runtime.streams``: ``with_gaps`` (a ``gap`` before each break in
stored seqs, carrying the seq just before the next event), ``_consecutive`` (what the bus brought
without a hole) and ``_until_terminal`` (a batch cut after its terminal event). No store, no
engine: each case is stated with literal seqs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from culm.domain.events import Cancelled, Gap, RunEvent, Token
from culm.runtime.streams import _consecutive, _until_terminal, with_gaps

# No database: the backend fixture would only run the same test twice.
pytestmark = pytest.mark.backends("sqlite")

_START = datetime(2026, 12, 6, tzinfo=UTC)


def _token(seq: int, run_id: str = "r") -> RunEvent:
    # Each event its own time, so a gap stamped with the wrong event's time is seen.
    ts = _START + timedelta(seconds=seq)
    return Token(content=str(seq)).stamped(seq=seq, run_id=run_id, session_id="s", ts=ts)


def _gap(from_seq: int, to_seq: int, before: RunEvent) -> RunEvent:
    return Gap(from_seq=from_seq, to_seq=to_seq).stamped(
        seq=to_seq, run_id=before.run_id, session_id=before.session_id, ts=before.ts
    )


def test_no_events_are_no_events() -> None:
    assert with_gaps([], 0) == []
    assert with_gaps([], 7) == []


def test_events_without_a_break_come_back_unchanged() -> None:
    events = [_token(4), _token(5), _token(6)]
    assert with_gaps(events, 3) == events
    assert with_gaps([_token(1)], 0) == [_token(1)]


def test_a_break_after_the_cursor_is_a_gap_up_to_the_first_event() -> None:
    # After 3, the store holds 6 and 7: 4 and 5 were lost.
    first = _token(6)
    got = with_gaps([first, _token(7)], 3)
    assert got == [_gap(4, 5, first), first, _token(7)]
    gap = got[0]
    assert gap.type == "gap" and (gap.from_seq, gap.to_seq) == (4, 5)  # type: ignore[attr-defined]
    assert (gap.seq, gap.run_id, gap.session_id, gap.ts) == (5, "r", "s", first.ts)


def test_each_break_gets_its_own_gap_of_exactly_the_missing_seqs() -> None:
    # Stored after 0: 1, 3, 4, 8 (2, and 5 to 7, missing).
    events = [_token(1), _token(3), _token(4), _token(8)]
    got = with_gaps(events, 0)
    assert got == [
        _token(1),
        _gap(2, 2, _token(3)),
        _token(3),
        _token(4),
        _gap(5, 7, _token(8)),
        _token(8),
    ]
    assert [(e.type, e.seq) for e in got] == [
        ("token", 1),
        ("gap", 2),
        ("token", 3),
        ("token", 4),
        ("gap", 7),
        ("token", 8),
    ]


def test_a_break_before_the_last_event_is_a_gap() -> None:
    # 1, 3, 4 after 0: the last but one seq equals the count, the last does not.
    got = with_gaps([_token(1), _token(3), _token(4)], 0)
    assert [(e.type, e.seq) for e in got] == [("token", 1), ("gap", 2), ("token", 3), ("token", 4)]
    got = with_gaps([_token(1), _token(2), _token(4)], 0)
    assert [(e.type, e.seq) for e in got] == [("token", 1), ("token", 2), ("gap", 3), ("token", 4)]


def test_the_gap_takes_the_run_of_the_event_it_precedes() -> None:
    later = _token(9, run_id="other")
    assert with_gaps([later], 2) == [_gap(3, 8, later), later]


def test_consecutive_keeps_what_follows_the_cursor_without_a_hole() -> None:
    assert _consecutive([], 5) == []
    assert _consecutive([_token(6), _token(7)], 5) == [_token(6), _token(7)]
    assert _consecutive([_token(6), _token(7), _token(9), _token(10)], 5) == [_token(6), _token(7)]
    assert _consecutive([_token(7), _token(8)], 5) == []  # 6 is missing: nothing follows
    assert _consecutive([_token(5), _token(6)], 5) == []  # not after the cursor


def _cancelled(seq: int) -> RunEvent:
    return Cancelled(reason="stopped").stamped(seq=seq, run_id="r", session_id="s", ts=_START)


def test_a_batch_ends_at_its_terminal_event() -> None:
    assert _until_terminal([]) == []
    assert _until_terminal([_token(1), _token(2)]) == [_token(1), _token(2)]
    assert _until_terminal([_cancelled(1)]) == [_cancelled(1)]
    assert _until_terminal([_token(1), _cancelled(2), _token(3)]) == [_token(1), _cancelled(2)]
    assert _until_terminal([_token(1), _token(2), _cancelled(3)]) == [
        _token(1),
        _token(2),
        _cancelled(3),
    ]
