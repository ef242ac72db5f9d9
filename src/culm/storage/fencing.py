"""Fenced writes of run events and messages.

A worker's write for a run is conditional on (run_id, owner, epoch): the run's row is locked
and checked first — runs before run_events and messages, in run_id order, everywhere, so two
writers never deadlock — and a run whose fence fails gets nothing written. A batch of events of
many runs isolates its runs from each other: a failed fence, or a constraint one run's events
break (a duplicate seq), leaves that run out and stores the others.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from culm.domain.events import RunEvent
from culm.errors import LeaseLostError
from culm.storage import ops
from culm.storage.base import Fence
from culm.storage.rowwriter import RowWriter
from culm.storage.schema import run_events, runs

FENCE_ROWS = (
    sa.select(runs.c.run_id, runs.c.owner, runs.c.epoch)
    .where(runs.c.run_id.in_(sa.bindparam("run_ids", expanding=True)))
    .order_by(runs.c.run_id)
    .with_for_update()
)


# On SQLite (``RowWriter.direct``) the same query with a fixed number of plain parameters, so
# that its SQL is compiled once and the driver keeps it prepared: an expanding IN is rendered
# anew on every execution. The run_ids are padded (repeating the last) to a power of two.
_DIRECT_MOST = 256
_DIRECT_FENCE_ROWS = {
    count: sa.select(runs.c.run_id, runs.c.owner, runs.c.epoch)
    .where(runs.c.run_id.in_([sa.bindparam(f"r{i}") for i in range(count)]))
    .order_by(runs.c.run_id)
    for count in (2**k for k in range(_DIRECT_MOST.bit_length()))
}


def failed_fences(
    conn: sa.Connection, fences: Mapping[str, Fence], rows: RowWriter | None = None
) -> set[str]:
    """Lock the rows of the fenced runs (in run_id order) and return those whose (owner,
    epoch) is not the fence's any more. With ``rows`` on SQLite, straight to the driver."""
    if not fences:
        return set()
    run_ids = sorted(fences)
    found: Iterable[Any]
    if rows is not None and rows.direct:
        found = _direct_fence_rows(conn, rows, run_ids)
    else:
        found = conn.execute(FENCE_ROWS, {"run_ids": run_ids})
    held = {run_id for run_id, owner, epoch in found if (owner, epoch) == fences[run_id]}
    return set(fences) - held


def _direct_fence_rows(
    conn: sa.Connection, rows: RowWriter, run_ids: list[str]
) -> list[tuple[str, str | None, int]]:
    found: list[tuple[str, str | None, int]] = []
    for start in range(0, len(run_ids), _DIRECT_MOST):
        chunk = run_ids[start : start + _DIRECT_MOST]
        count = 1 << (len(chunk) - 1).bit_length()
        chunk += [chunk[-1]] * (count - len(chunk))
        parameters = {f"r{i}": run_id for i, run_id in enumerate(chunk)}
        found += rows.fetch(conn, _DIRECT_FENCE_ROWS[count], parameters)
    return found


def check_fence(
    conn: sa.Connection, run_id: str, fence: Fence, rows: RowWriter | None = None
) -> None:
    """Lock ``run_id``'s row; ``LeaseLostError`` unless it is still the fence's (with
    ``rows``, as :func:`failed_fences` does)."""
    if failed_fences(conn, {run_id: fence}, rows):
        raise LeaseLostError(run_id)


def duplicated_in_batch(events: Sequence[RunEvent]) -> set[str]:
    """Runs with one seq twice among ``events`` (no insert of them can succeed)."""
    counts = Counter((event.run_id, event.seq) for event in events)
    return {run_id for (run_id, _seq), count in counts.items() if count > 1}


def stored_already(conn: sa.Connection, events: Sequence[RunEvent]) -> set[str]:
    """Runs some of whose events' seqs are stored already (a duplicate-key violation)."""
    spans: dict[str, tuple[int, int]] = {}
    for event in events:
        low, high = spans.get(event.run_id, (event.seq, event.seq))
        spans[event.run_id] = (min(low, event.seq), max(high, event.seq))
    wanted = {(event.run_id, event.seq) for event in events}
    clauses = [
        sa.and_(run_events.c.run_id == run_id, run_events.c.seq.between(low, high))
        for run_id, (low, high) in spans.items()
    ]
    found = conn.execute(sa.select(run_events.c.run_id, run_events.c.seq).where(sa.or_(*clauses)))
    return {row.run_id for row in found if (row.run_id, row.seq) in wanted}


class EventBatch:
    """One attempt at storing a batch: statements prepared outside the transaction (on the
    caller's thread) for the common case where every fence holds. ``end(conn, failed)``, when
    given, writes what follows the events in the same transaction (the runs' endings), told
    the runs whose fence failed."""

    def __init__(
        self,
        rows: RowWriter,
        events: Sequence[RunEvent],
        fences: Mapping[str, Fence],
        reserve: int = 0,
        end: Callable[[sa.Connection, set[str]], None] | None = None,
    ) -> None:
        self._rows = rows
        self._reserve = reserve
        self._end = end
        self.events = events
        run_ids = {event.run_id for event in events}
        self.fences = {run_id: fences[run_id] for run_id in run_ids if run_id in fences}
        self.epochs = {run_id: fence[1] for run_id, fence in self.fences.items()}
        self._inserts = ops.prepare_events(rows, events, self.epochs)
        self._liveness = ops.liveness_rows(events, reserve)

    def __call__(self, conn: sa.Connection) -> set[str]:
        """The transaction: returns the runs whose fence failed (nothing of theirs stored)."""
        failed = failed_fences(conn, self.fences, self._rows)
        if not failed:
            self._update_liveness(conn, self._liveness)
            self._inserts.execute(conn)
        else:
            kept = [event for event in self.events if event.run_id not in failed]
            if kept:
                self._update_liveness(conn, ops.liveness_rows(kept, self._reserve))
                ops.insert_events(conn, self._rows, kept, self.epochs)
        if self._end is not None:
            self._end(conn, failed)
        return failed

    def _update_liveness(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        if self._rows.direct:
            self._rows.execute_many(conn, ops.LIVENESS_UPDATE, rows)
        else:
            conn.execute(ops.LIVENESS_UPDATE, rows)


def without(events: Sequence[RunEvent], run_ids: set[str]) -> list[RunEvent]:
    return [event for event in events if event.run_id not in run_ids]
