"""One active run per session, enforced by the database itself, on both backends.

The contract (docs/ARCHITECTURE.md, "Backends"): "One active run per session" is enforced by the
database (a partial unique index over active runs), not only by a lock in memory, so it holds
across hosts. The store checks before it inserts, so going through ``reserve_run`` cannot tell
the index is there; these tests write rows straight through the store's write path, as a second
host that lost the race would, and the database must refuse them.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from culm.domain.models import Run, RunStatus, Session
from culm.domain.time import utc_now
from culm.storage.rows import run_to_row
from culm.storage.schema import runs
from culm.storage.sql import SqlStore


def _run(session_id: str, **fields: Any) -> Run:
    return Run(run_id=str(uuid.uuid4()), session_id=session_id, model="scripted:echo", **fields)


async def _session(store: SqlStore) -> str:
    session = Session(session_id=str(uuid.uuid4()), model="scripted:echo", workspace="/w")
    await store.create_session(session)
    return session.session_id


async def _insert(store: SqlStore, run: Run, *, queued: bool = False) -> None:
    """Insert the row as another host would, without the store's check."""
    row = run_to_row(run) | {
        "queued": queued,
        "owner": "host-b",
        "lease_expires_at": utc_now() + timedelta(minutes=5),
    }
    await store.write(lambda conn: conn.execute(runs.insert(), row))


async def _active(store: SqlStore, session_id: str) -> str:
    run = _run(session_id)
    await store.reserve_run(run, queue=False, owner="host-a", lease_seconds=300)
    return run.run_id


@pytest.mark.parametrize("status", [RunStatus.PENDING, RunStatus.RUNNING])
async def test_the_database_refuses_a_second_active_run(store: SqlStore, status: RunStatus) -> None:
    session_id = await _session(store)
    await _active(store, session_id)
    with pytest.raises(sa.exc.IntegrityError):
        await _insert(store, _run(session_id, status=status))
    assert [r.status for r in await store.list_runs(session_id=session_id)] == [RunStatus.PENDING]


async def test_the_database_refuses_to_make_a_queued_run_active_beside_the_active_one(
    store: SqlStore,
) -> None:
    session_id = await _session(store)
    await _active(store, session_id)
    queued = _run(session_id)
    await _insert(store, queued, queued=True)  # waiting outside the slot: allowed

    def take_the_slot(conn: sa.Connection) -> None:
        conn.execute(runs.update().where(runs.c.run_id == queued.run_id).values(queued=False))

    with pytest.raises(sa.exc.IntegrityError):
        await store.write(take_the_slot)


async def test_ended_runs_and_other_sessions_do_not_hold_the_slot(store: SqlStore) -> None:
    session_id = await _session(store)
    for status in (RunStatus.COMPLETED, RunStatus.CANCELLED, RunStatus.ERROR):
        await _insert(store, _run(session_id, status=status))
    await _active(store, session_id)  # the slot is still free
    other = await _session(store)
    await _insert(store, _run(other, status=RunStatus.RUNNING))  # another session's slot
