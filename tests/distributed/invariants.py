"""The invariants every distributed test asserts, read from the database itself (SQL).

- **seq accounted for**: a run's events are seq 1..last_seq, each once, except for one break at a
  takeover (recovery appends after the seqs reserved for events shown before they were stored:
  the event after a break is never of the attempt before it); no event without a run;
- **fencing**: along a run's seq the events' epochs never decrease, and none is above the run's
  epoch: an event written under a stale epoch (by an owner that lost the run) would show as an
  epoch lower than one before it; every event of a run that was ever claimed carries its epoch;
- **one terminal event**, the last one, matching a finished run's status;
- **one active run per session**: now (no two in the slot) and in history (within a session, a
  run starts only after the run started before it has ended);
- **no seq a client saw is reused**: every event an SSE client received is stored identically,
  or (lost in a crash) its seq is in a break, below the run's next stored event;
- **nothing stuck**: no run is active under a lease that expired longer ago than ``grace``
  (a heartbeat's sweep, plus slack), and no run is ``running`` without an owner.

:func:`check` asserts all of them and returns a summary (counts) a test may look at.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from culm.domain.events import event_from_dict, event_from_json, event_to_dict

GAPS = """
SELECT r.run_id, r.last_seq, count(e.seq) AS n, min(e.seq) AS lo, max(e.seq) AS hi
FROM runs r LEFT JOIN run_events e ON e.run_id = r.run_id
GROUP BY r.run_id, r.last_seq
HAVING coalesce(max(e.seq), 0) <> r.last_seq OR coalesce(min(e.seq), 1) <> 1
"""
# A break in a run's seqs within one attempt (the event after it of the same epoch as the one
# before): only a takeover (a later epoch, or the store's own unfenced ending) may leave one.
BREAKS = """
SELECT x.run_id, x.seq, x.before_seq, x.epoch FROM (
  SELECT e.run_id, e.seq, e.epoch,
         lag(e.seq) OVER (PARTITION BY e.run_id ORDER BY e.seq) AS before_seq,
         lag(e.epoch) OVER (PARTITION BY e.run_id ORDER BY e.seq) AS before_epoch
  FROM run_events e
) x
WHERE x.before_seq IS NOT NULL AND x.seq <> x.before_seq + 1
  AND x.epoch IS NOT DISTINCT FROM x.before_epoch
"""
ORPHAN_EVENTS = """
SELECT DISTINCT e.run_id FROM run_events e LEFT JOIN runs r ON r.run_id = e.run_id
WHERE r.run_id IS NULL
"""
# An epoch lower than the highest one before it along seq, or higher than the run's own.
STALE_EPOCHS = """
SELECT x.run_id, x.seq, x.type, x.epoch, x.before, x.run_epoch FROM (
  SELECT e.run_id, e.seq, e.type, e.epoch, r.epoch AS run_epoch,
         max(e.epoch) OVER (PARTITION BY e.run_id ORDER BY e.seq
                            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before
  FROM run_events e JOIN runs r ON r.run_id = e.run_id
) x
WHERE x.epoch < x.before OR x.epoch > x.run_epoch
"""
UNFENCED = """
SELECT e.run_id, e.seq, e.type FROM run_events e JOIN runs r ON r.run_id = e.run_id
WHERE e.epoch IS NULL AND r.epoch > 0
"""
TERMINAL = """
SELECT r.run_id, r.status, r.last_seq,
       count(e.seq) FILTER (WHERE e.type IN ('complete', 'cancelled', 'error')) AS terminals,
       max(e.seq) FILTER (WHERE e.type IN ('complete', 'cancelled', 'error')) AS terminal_seq,
       (array_agg(e.type ORDER BY e.seq DESC))[1] AS last_type
FROM runs r LEFT JOIN run_events e ON e.run_id = r.run_id
GROUP BY r.run_id, r.status, r.last_seq
"""
TWO_ACTIVE = """
SELECT session_id, array_agg(run_id) AS run_ids FROM runs
WHERE status IN ('pending', 'running') AND queued = false
GROUP BY session_id HAVING count(*) > 1
"""
# Within a session, ordered by start: a run started before the previous one ended.
OVERLAPS = """
SELECT x.session_id, x.previous, x.run_id FROM (
  SELECT session_id, run_id, started_at,
         lag(run_id) OVER w AS previous, lag(completed_at) OVER w AS previous_end
  FROM runs WHERE started_at IS NOT NULL
  WINDOW w AS (PARTITION BY session_id ORDER BY started_at, run_id)
) x
WHERE x.previous IS NOT NULL AND (x.previous_end IS NULL OR x.started_at < x.previous_end)
"""
STUCK = """
SELECT run_id, status, owner, lease_expires_at, now() AS db_now FROM runs
WHERE status IN ('pending', 'running')
  AND ((owner IS NOT NULL AND (lease_expires_at IS NULL
                               OR lease_expires_at < now() - make_interval(secs => :grace)))
       OR (status = 'running' AND owner IS NULL))
"""
_STATUS_OF = {"complete": "completed", "cancelled": "cancelled", "error": "error"}


@dataclass(frozen=True)
class Summary:
    runs: int
    events: int
    by_status: dict[str, int]


async def _all(conn: AsyncConnection, query: str, **params: Any) -> list[sa.Row[Any]]:
    return list(await conn.execute(sa.text(query), params))


async def check(
    db: AsyncEngine,
    *,
    seen: Mapping[str, Mapping[int, Mapping[str, Any]]] | None = None,
    stuck_grace: float | None = None,
) -> Summary:
    """Assert every invariant on the database behind ``db``. ``seen``: what SSE clients
    received, per run and seq. ``stuck_grace``: check "nothing stuck" (only while workers are
    up to sweep): seconds past a lease's expiry after which an active run is stuck."""
    async with db.connect() as conn:
        assert not (gaps := await _all(conn, GAPS)), f"seq not 1..last_seq: {gaps[:10]}"
        breaks = await _all(conn, BREAKS)
        assert not breaks, f"seq breaks within one attempt: {breaks[:10]}"
        assert not (orphans := await _all(conn, ORPHAN_EVENTS)), f"events without run: {orphans}"
        stale = await _all(conn, STALE_EPOCHS)
        assert not stale, f"events under a stale epoch: {stale[:10]}"
        unfenced = await _all(conn, UNFENCED)
        assert not unfenced, f"events of a claimed run without epoch: {unfenced[:10]}"
        _check_terminals(await _all(conn, TERMINAL))
        assert not (two := await _all(conn, TWO_ACTIVE)), f"two active runs in a session: {two}"
        overlaps = await _all(conn, OVERLAPS)
        assert not overlaps, f"runs of one session overlapped: {overlaps[:10]}"
        if stuck_grace is not None:
            stuck = await _all(conn, STUCK, grace=stuck_grace)
            assert not stuck, f"runs stuck past lease + sweep: {stuck[:10]}"
        if seen:
            await _check_seen(conn, seen)
        counts = await _all(conn, "SELECT status, count(*) AS n FROM runs GROUP BY status")
        events = await _all(conn, "SELECT count(*) AS n FROM run_events")
    by_status = {row.status: int(row.n) for row in counts}
    return Summary(sum(by_status.values()), int(events[0].n), by_status)


def _check_terminals(found: list[sa.Row[Any]]) -> None:
    for row in found:
        assert row.terminals <= 1, f"{row.run_id}: {row.terminals} terminal events"
        if row.terminals:
            assert row.terminal_seq == row.last_seq, f"{row.run_id}: events after the terminal"
        if row.status in _STATUS_OF.values():
            assert row.terminals == 1, f"{row.run_id} is {row.status} without terminal event"
            assert _STATUS_OF[row.last_type] == row.status, (row.run_id, row.status, row.last_type)


async def _check_seen(
    conn: AsyncConnection, seen: Mapping[str, Mapping[int, Mapping[str, Any]]]
) -> None:
    for run_id, events in seen.items():
        stored = {
            row.seq: event_to_dict(event_from_json(row.body))
            for row in await _all(
                conn, "SELECT seq, body FROM run_events WHERE run_id = :r", r=run_id
            )
        }
        for seq, event in events.items():
            if seq not in stored:  # shown before it was stored, then lost: never reused
                assert any(later > seq for later in stored), f"{run_id}: seq {seq} lost at the end"
                continue
            saw = event_to_dict(event_from_dict(dict(event)))
            assert saw == stored[seq], f"{run_id} seq {seq}: saw {saw}, stored {stored[seq]}"


async def takeovers(db: AsyncEngine, run_ids: list[str]) -> dict[str, int]:
    """How many ``run_recovered`` events each of ``run_ids`` has."""
    async with db.connect() as conn:
        found = await _all(
            conn,
            "SELECT r.run_id, count(e.seq) FILTER (WHERE e.type = 'run_recovered') AS n"
            " FROM runs r LEFT JOIN run_events e ON e.run_id = r.run_id"
            " WHERE r.run_id = ANY(:ids) GROUP BY r.run_id",
            ids=run_ids,
        )
    return {row.run_id: int(row.n) for row in found}
