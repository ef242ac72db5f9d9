"""``SqlStore``: the store on SQLAlchemy Core, for SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from pydantic import TypeAdapter
from sqlalchemy.ext.asyncio import AsyncConnection

from culm.domain import liveness
from culm.domain.events import (
    Cancelled,
    RunEvent,
    RunEventBase,
    event_from_json,
    event_to_json,
)
from culm.domain.models import (
    Message,
    Run,
    RunStatus,
    Session,
    Usage,
)
from culm.domain.time import as_utc, utc_now
from culm.errors import AlreadyRunningError, SessionBusyError
from culm.storage import migrate
from culm.storage.base import Orphan, Reservation, Store
from culm.storage.dialect import Dialect, dialect_for
from culm.storage.rows import run_from_row, run_to_row, session_from_row
from culm.storage.schema import messages, run_events, runs, sessions

_messages: TypeAdapter[Message] = TypeAdapter(Message)
_ACTIVE = (RunStatus.PENDING.value, RunStatus.RUNNING.value)
_SLOT = sa.and_(runs.c.status.in_(_ACTIVE), runs.c.queued.is_(False))


_P = ParamSpec("_P")
_T = TypeVar("_T")
_WriteMethod = Callable[_P, Coroutine[Any, Any, _T]]


def _shielded(method: _WriteMethod[_P, _T]) -> _WriteMethod[_P, _T]:
    """Run a write to its end even if the caller is cancelled.

    A cancel landing inside a write transaction (for instance while ``BEGIN IMMEDIATE`` waits
    for SQLite's lock, which then completes in the driver's thread) could leave an open
    transaction holding the write lock. Shielded, the transaction commits or rolls back; the
    caller still gets its CancelledError, right after.
    """

    @functools.wraps(method)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await asyncio.shield(method(*args, **kwargs))

    return wrapper


class SqlStore(Store):
    def __init__(self, url: str) -> None:
        self.dialect: Dialect = dialect_for(url)
        self._write_lock = asyncio.Lock()

    async def start(self) -> None:
        self._writer, self._reader = self.dialect.create_engines()
        await migrate.upgrade(self._writer)

    async def aclose(self) -> None:
        await self._writer.dispose()
        if self._reader is not self._writer:
            await self._reader.dispose()

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        if self.dialect.serialize_writes:
            async with self._write_lock, self._writer.begin() as conn:
                yield conn
        else:
            async with self._writer.begin() as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self._reader.connect() as conn:
            yield conn

    # For the stores of other concerns (schedules, …) that keep their tables in this database.

    def write_transaction(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """A write transaction, serialized with this store's own where the dialect needs it."""
        return self._write()

    def read_connection(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        return self._read()

    # Sessions and messages

    @_shielded
    async def create_session(self, session: Session) -> None:
        row = session.model_dump(mode="json")
        row["tools"] = list(session.tools)
        row["created_at"] = session.created_at
        async with self._write() as conn:
            await conn.execute(sessions.insert().values(**row))

    async def get_session(self, session_id: str) -> Session | None:
        async with self._read() as conn:
            row = (
                await conn.execute(sessions.select().where(sessions.c.session_id == session_id))
            ).first()
        return None if row is None else session_from_row(row)

    async def list_sessions(self, *, limit: int = 100) -> list[Session]:
        query = sessions.select().order_by(sessions.c.created_at.desc()).limit(limit)
        async with self._read() as conn:
            return [session_from_row(row) for row in await conn.execute(query)]

    @_shielded
    async def delete_session(self, session_id: str) -> bool:
        async with self._write() as conn:
            active = await _active_run_id(conn, session_id)
            if active is not None:
                raise SessionBusyError(session_id, active)
            run_ids = sa.select(runs.c.run_id).where(runs.c.session_id == session_id)
            await conn.execute(run_events.delete().where(run_events.c.run_id.in_(run_ids)))
            await conn.execute(runs.delete().where(runs.c.session_id == session_id))
            await conn.execute(messages.delete().where(messages.c.session_id == session_id))
            result = await conn.execute(
                sessions.delete().where(sessions.c.session_id == session_id)
            )
            return result.rowcount > 0

    @_shielded
    async def append_messages(
        self, session_id: str, items: Sequence[Message], *, run_id: str | None
    ) -> None:
        if not items:
            return
        now = utc_now()
        async with self._write() as conn:
            last = await conn.scalar(
                sa.select(sa.func.max(messages.c.idx)).where(messages.c.session_id == session_id)
            )
            start = 0 if last is None else last + 1
            rows = [
                {
                    "session_id": session_id,
                    "idx": start + i,
                    "run_id": run_id,
                    "role": item.role,
                    "body": item.model_dump_json(),
                    "created_at": now,
                }
                for i, item in enumerate(items)
            ]
            await conn.execute(messages.insert(), rows)

    async def get_messages(self, session_id: str) -> list[Message]:
        query = (
            sa.select(messages.c.body)
            .where(messages.c.session_id == session_id)
            .order_by(messages.c.idx)
        )
        async with self._read() as conn:
            return [_messages.validate_json(body) for body in await conn.scalars(query)]

    # Runs

    @_shielded
    async def reserve_run(
        self,
        run: Run,
        *,
        owner: str,
        lease_expires_at: datetime,
        queue: bool,
        jump_queue: bool = False,
    ) -> Reservation:
        row = run_to_row(run)
        for _ in range(5):
            try:
                async with self._write() as conn:
                    active = await _active_run_id(conn, run.session_id)
                    if active is None:
                        await conn.execute(
                            runs.insert().values(
                                **row, queued=False, owner=owner, lease_expires_at=lease_expires_at
                            )
                        )
                        return Reservation(run=run)
                    if not queue:
                        raise AlreadyRunningError(run.session_id, active)
                    order = await _queue_order(conn, run.session_id, jump_queue)
                    await conn.execute(runs.insert().values(**row, queued=True, queue_order=order))
                    queued = run.model_copy(update={"queued": True})
                    return Reservation(run=queued, active_run_id=active)
            except sa.exc.IntegrityError as exc:
                # Another process took the slot between our check and insert: look again.
                if not self.dialect.is_unique_violation(exc):
                    raise
        raise AlreadyRunningError(run.session_id, "unknown")

    @_shielded
    async def promote_next(
        self, session_id: str, *, owner: str, lease_expires_at: datetime
    ) -> Run | None:
        try:
            async with self._write() as conn:
                if await _active_run_id(conn, session_id) is not None:
                    return None
                next_id = await conn.scalar(
                    sa.select(runs.c.run_id)
                    .where(runs.c.session_id == session_id, runs.c.queued.is_(True))
                    .where(runs.c.status == RunStatus.PENDING.value)
                    .order_by(runs.c.queue_order, runs.c.created_at)
                    .limit(1)
                )
                if next_id is None:
                    return None
                # Compare-and-set: a concurrent promoter may have taken this run first.
                result = await conn.execute(
                    runs.update()
                    .where(runs.c.run_id == next_id, runs.c.queued.is_(True))
                    .where(runs.c.status == RunStatus.PENDING.value)
                    .values(
                        queued=False,
                        queue_order=None,
                        owner=owner,
                        lease_expires_at=lease_expires_at,
                    )
                )
                if result.rowcount != 1:
                    return None
                return await _get_run(conn, next_id)
        except sa.exc.IntegrityError as exc:
            # A concurrent promoter gave the slot to another queued run.
            if not self.dialect.is_unique_violation(exc):
                raise
            return None

    @_shielded
    async def claim_run(
        self, run_id: str, *, owner: str, lease_expires_at: datetime, started_at: datetime
    ) -> Run | None:
        async with self._write() as conn:
            result = await conn.execute(
                runs.update()
                .where(runs.c.run_id == run_id, runs.c.status == RunStatus.PENDING.value)
                .where(runs.c.queued.is_(False), runs.c.cancel_requested.is_(None))
                .where(runs.c.owner == owner)
                .values(
                    status=RunStatus.RUNNING.value,
                    lease_expires_at=lease_expires_at,
                    started_at=started_at,
                )
            )
            if result.rowcount == 1:
                return await _get_run(conn, run_id)
            # A run of ours whose cancel was requested while nobody ran it (before a crash or a
            # release, then re-queued): end it now, so that "not claimable" means "ended".
            flagged = (
                await conn.execute(
                    runs.select().where(runs.c.run_id == run_id, runs.c.owner == owner, _SLOT)
                )
            ).first()
            if flagged is not None and flagged.cancel_requested is not None:
                await _end_cancelled(conn, run_from_row(flagged), flagged.cancel_requested)
            return None

    @_shielded
    async def renew_leases(
        self, owner: str, run_ids: Sequence[str], lease_expires_at: datetime
    ) -> list[str]:
        if not run_ids:
            return []
        mine = sa.and_(runs.c.owner == owner, runs.c.run_id.in_(list(run_ids)))
        async with self._write() as conn:
            await conn.execute(runs.update().where(mine).values(lease_expires_at=lease_expires_at))
            cancelled = await conn.scalars(
                sa.select(runs.c.run_id).where(mine, runs.c.cancel_requested.is_not(None))
            )
            return list(cancelled)

    @_shielded
    async def finish_run(
        self,
        run_id: str,
        *,
        status: RunStatus,
        error: str | None,
        usage: Usage,
        completed_at: datetime,
    ) -> None:
        async with self._write() as conn:
            await conn.execute(
                runs.update()
                .where(runs.c.run_id == run_id)
                .values(
                    status=status.value,
                    error=error,
                    usage=usage.model_dump(),
                    completed_at=completed_at,
                    owner=None,
                    lease_expires_at=None,
                    queued=False,
                    queue_order=None,
                )
            )

    @_shielded
    async def request_cancel(self, run_id: str, reason: str) -> Run | None:
        async with self._write() as conn:
            # Lock the row: a concurrent claim must not start the run between look and write.
            locked = runs.select().where(runs.c.run_id == run_id).with_for_update()
            row = (await conn.execute(locked)).first()
            run = None if row is None else run_from_row(row)
            if run is None or run.status.is_terminal:
                return run
            if run.status is RunStatus.PENDING:
                # Nobody executes it yet: end it here, with its terminal event.
                await _end_cancelled(conn, run, reason)
            else:
                await conn.execute(
                    runs.update()
                    .where(runs.c.run_id == run_id, runs.c.cancel_requested.is_(None))
                    .values(cancel_requested=reason)
                )
            return await _get_run(conn, run_id)

    async def get_run(self, run_id: str) -> Run | None:
        async with self._read() as conn:
            return await _get_run(conn, run_id)

    async def get_active_run(self, session_id: str) -> Run | None:
        async with self._read() as conn:
            row = (
                await conn.execute(runs.select().where(runs.c.session_id == session_id, _SLOT))
            ).first()
        return None if row is None else run_from_row(row)

    async def list_runs(
        self,
        *,
        session_id: str | None = None,
        status: RunStatus | None = None,
        parent_run_id: str | None = None,
        limit: int = 100,
    ) -> list[Run]:
        query = runs.select().order_by(runs.c.created_at.desc(), runs.c.run_id).limit(limit)
        if session_id is not None:
            query = query.where(runs.c.session_id == session_id)
        if status is not None:
            query = query.where(runs.c.status == status.value)
        if parent_run_id is not None:
            query = query.where(runs.c.parent_run_id == parent_run_id)
        async with self._read() as conn:
            return [run_from_row(row) for row in await conn.execute(query)]

    async def list_orphan_candidates(self, *, exclude_owner: str) -> list[Orphan]:
        query = runs.select().where(
            _SLOT, sa.or_(runs.c.owner.is_(None), runs.c.owner != exclude_owner)
        )
        async with self._read() as conn:
            return [
                Orphan(
                    run=run_from_row(row), owner=row.owner, lease_expires_at=row.lease_expires_at
                )
                for row in await conn.execute(query)
            ]

    @_shielded
    async def recover_run(
        self,
        orphan: Orphan,
        *,
        owner: str,
        lease_expires_at: datetime,
        requeue: bool,
        now: datetime,
        events: Sequence[RunEventBase],
    ) -> Run | None:
        run = orphan.run
        same = [runs.c.run_id == run.run_id, runs.c.status == run.status.value]
        same.append(
            runs.c.owner.is_(None) if orphan.owner is None else runs.c.owner == orphan.owner
        )
        async with self._write() as conn:
            if requeue:
                values: dict[str, Any] = {
                    "status": RunStatus.PENDING.value,
                    "attempt": run.attempt + 1,
                    "owner": owner,
                    "lease_expires_at": lease_expires_at,
                    "started_at": None,
                }
            else:
                values = {
                    "status": RunStatus.ERROR.value,
                    "error": "interrupted",
                    "completed_at": now,
                    "owner": None,
                    "lease_expires_at": None,
                }
            result = await conn.execute(runs.update().where(*same).values(**values))
            if result.rowcount != 1:
                return None
            seq = await _last_seq(conn, run.run_id)
            stamped = [
                event.stamped(seq=seq + i, run_id=run.run_id, session_id=run.session_id, ts=now)
                for i, event in enumerate(events, start=1)
            ]
            await _insert_events(conn, stamped)
            await _update_liveness(conn, stamped)
            return await _get_run(conn, run.run_id)

    @_shielded
    async def release_runs(self, owner: str) -> list[str]:
        mine = sa.and_(runs.c.owner == owner, _SLOT)
        async with self._write() as conn:
            run_ids = list(await conn.scalars(sa.select(runs.c.run_id).where(mine)))
            if run_ids:
                await conn.execute(
                    runs.update()
                    .where(runs.c.run_id.in_(run_ids))
                    .values(
                        status=RunStatus.PENDING.value,
                        owner=None,
                        lease_expires_at=None,
                        started_at=None,
                    )
                )
            return run_ids

    async def list_stranded_sessions(self) -> list[str]:
        holder = runs.alias("holder")
        has_holder = sa.exists().where(
            holder.c.session_id == runs.c.session_id,
            holder.c.status.in_(_ACTIVE),
            holder.c.queued.is_(False),
        )
        query = (
            sa.select(runs.c.session_id)
            .where(runs.c.queued.is_(True), runs.c.status == RunStatus.PENDING.value)
            .where(~has_holder)
            .distinct()
        )
        async with self._read() as conn:
            return list(await conn.scalars(query))

    async def has_run_messages(self, run_id: str) -> bool:
        query = sa.select(messages.c.idx).where(messages.c.run_id == run_id).limit(1)
        async with self._read() as conn:
            return (await conn.scalar(query)) is not None

    # Run events

    @_shielded
    async def append_events(self, events: Sequence[RunEvent]) -> None:
        if not events:
            return
        async with self._write() as conn:
            await _insert_events(conn, events)
            await _update_liveness(conn, events)

    async def read_events(
        self, run_id: str, *, after: int = 0, limit: int | None = None
    ) -> list[RunEvent]:
        query = (
            sa.select(run_events.c.body)
            .where(run_events.c.run_id == run_id, run_events.c.seq > after)
            .order_by(run_events.c.seq)
        )
        if limit is not None:
            query = query.limit(limit)
        async with self._read() as conn:
            return [event_from_json(body) for body in await conn.scalars(query)]

    async def last_event_seq(self, run_id: str) -> int:
        async with self._read() as conn:
            return await _last_seq(conn, run_id)

    async def read_events_of_types(
        self, run_id: str, types: Sequence[str], *, limit: int
    ) -> list[RunEvent]:
        query = (
            sa.select(run_events.c.body)
            .where(run_events.c.run_id == run_id, run_events.c.type.in_(list(types)))
            .order_by(run_events.c.seq.desc())
            .limit(limit)
        )
        async with self._read() as conn:
            bodies = list(await conn.scalars(query))
        return [event_from_json(body) for body in reversed(bodies)]


# Helpers shared by the methods above (plain functions over a connection).


async def _active_run_id(conn: AsyncConnection, session_id: str) -> str | None:
    return await conn.scalar(sa.select(runs.c.run_id).where(runs.c.session_id == session_id, _SLOT))


async def _queue_order(conn: AsyncConnection, session_id: str, jump_queue: bool) -> float:
    queued = sa.and_(runs.c.session_id == session_id, runs.c.queued.is_(True))
    if jump_queue:
        first = await conn.scalar(sa.select(sa.func.min(runs.c.queue_order)).where(queued))
        return (first if first is not None else 0.0) - 1.0
    last = await conn.scalar(sa.select(sa.func.max(runs.c.queue_order)).where(queued))
    return (last if last is not None else 0.0) + 1.0


async def _get_run(conn: AsyncConnection, run_id: str) -> Run | None:
    row = (await conn.execute(runs.select().where(runs.c.run_id == run_id))).first()
    return None if row is None else run_from_row(row)


async def _last_seq(conn: AsyncConnection, run_id: str) -> int:
    value = await conn.scalar(
        sa.select(sa.func.max(run_events.c.seq)).where(run_events.c.run_id == run_id)
    )
    return int(value or 0)


async def _end_cancelled(conn: AsyncConnection, run: Run, reason: str) -> None:
    """End a run nobody executes as ``cancelled``, with its terminal event."""
    now = utc_now()
    seq = await _last_seq(conn, run.run_id) + 1
    event = Cancelled(reason=reason).stamped(
        seq=seq, run_id=run.run_id, session_id=run.session_id, ts=now
    )
    await _insert_events(conn, [event])
    await conn.execute(
        runs.update()
        .where(runs.c.run_id == run.run_id)
        .values(
            status=RunStatus.CANCELLED.value,
            completed_at=now,
            last_seq=seq,
            last_event_at=now,
            owner=None,
            lease_expires_at=None,
            queued=False,
            queue_order=None,
            cancel_requested=reason,
        )
    )


async def _insert_events(conn: AsyncConnection, events: Sequence[RunEvent]) -> None:
    if not events:
        return
    rows = [
        {
            "run_id": event.run_id,
            "seq": event.seq,
            "type": event.type,
            "ts": event.ts,
            "body": event_to_json(_in_utc(event)),
        }
        for event in events
    ]
    await conn.execute(run_events.insert(), rows)


def _in_utc(event: RunEvent) -> RunEvent:
    """The event with its ``ts`` in UTC, as replay promises (a copy only when it is not)."""
    if event.ts.tzinfo is UTC or event.ts.utcoffset() == timedelta(0):
        return event
    return event.model_copy(update={"ts": as_utc(event.ts)})


async def _update_liveness(conn: AsyncConnection, events: Sequence[RunEvent]) -> None:
    """One executemany for every run in the batch; fields the batch says nothing about keep
    their stored value (NULL parameters fall back to the column through COALESCE)."""
    states: dict[str, liveness.Liveness] = {}
    for event in events:
        states[event.run_id] = liveness.apply(states.get(event.run_id, _NO_LIVENESS), event)
    rows = [
        {
            "b_run_id": run_id,
            "b_last_seq": state.last_seq,
            "b_last_event_at": state.last_event_at,
            "b_round_count": state.round_count or None,
            "b_tool_name": state.last_tool_name if state.last_tool_phase else None,
            "b_tool_phase": state.last_tool_phase.value if state.last_tool_phase else None,
        }
        for run_id, state in states.items()
    ]
    if rows:
        await conn.execute(_LIVENESS_UPDATE, rows)


_LIVENESS_UPDATE = (
    runs.update()
    .where(runs.c.run_id == sa.bindparam("b_run_id"))
    .values(
        last_seq=sa.bindparam("b_last_seq"),
        last_event_at=sa.bindparam("b_last_event_at", type_=runs.c.last_event_at.type),
        round_count=sa.func.coalesce(
            sa.bindparam("b_round_count", type_=sa.Integer), runs.c.round_count
        ),
        last_tool_name=sa.func.coalesce(
            sa.bindparam("b_tool_name", type_=sa.String), runs.c.last_tool_name
        ),
        last_tool_phase=sa.func.coalesce(
            sa.bindparam("b_tool_phase", type_=sa.String), runs.c.last_tool_phase
        ),
    )
)
_NO_LIVENESS = liveness.Liveness()
