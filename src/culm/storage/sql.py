"""``SqlStore``: the store on SQLAlchemy Core, for SQLite and PostgreSQL alike.

Every write is one synchronous function over a connection (``def transaction(conn)``), run as
one transaction by the dialect's :class:`~culm.storage.writer.Writer` (see there for how, and
why a cancel never tears one). Reads run on the async reader engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from pydantic import TypeAdapter
from sqlalchemy.ext.asyncio import AsyncConnection

from culm.domain.events import (
    RunEvent,
    RunEventBase,
    event_from_json,
)
from culm.domain.models import (
    Message,
    Run,
    RunStatus,
    Session,
    Usage,
)
from culm.errors import AlreadyRunningError, SessionBusyError, StorageUnavailableError
from culm.storage import migrate, ops
from culm.storage.base import Orphan, Reservation, Store
from culm.storage.dialect import Dialect, dialect_for
from culm.storage.ending import ending_values
from culm.storage.health import StoreHealth, is_store_failure, unavailable
from culm.storage.rows import run_from_row, run_to_row, session_from_row
from culm.storage.rowwriter import RowWriter
from culm.storage.schema import messages, run_events, runs, sessions
from culm.storage.writer import Write

_messages: TypeAdapter[Message] = TypeAdapter(Message)

_T = TypeVar("_T")


class SqlStore(Store):
    def __init__(self, url: str) -> None:
        self.dialect: Dialect = dialect_for(url)
        self._rows = RowWriter(self.dialect.name)
        self.health = StoreHealth()

    async def start(self) -> None:
        self._writer, self._reader = self.dialect.create_engines()
        try:
            await self._writer.run(migrate.upgrade)
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        await self._writer.aclose()
        await self._reader.dispose()

    # For the stores of other concerns (schedules, metrics) that keep their tables here.

    async def write(self, fn: Write[_T]) -> _T:
        """Run ``fn(conn)`` as one write transaction (serialized with this store's own where
        the dialect needs it) and return what it returns. A store failure (disk full, the
        database gone) is raised as ``StorageUnavailableError`` and marks the store failing."""
        try:
            result = await self._writer.run(fn)
        except Exception as exc:
            if not is_store_failure(exc):
                self.health.succeeded()  # the store answered: the write itself was refused
                raise
            self.health.failed(exc)
            raise unavailable(exc) from exc
        self.health.succeeded()
        return result

    @contextlib.asynccontextmanager
    async def read_connection(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._reader.connect() as conn:
                yield conn
        except Exception as exc:
            if is_store_failure(exc):
                raise unavailable(exc) from exc
            raise

    async def check(self) -> str | None:
        """None while the store works, else why not: its last write failed, or it cannot be
        read (for a health check)."""
        if self.health.last_error is not None:
            return f"{self.health.last_error} (for {self.health.failing_for:.0f} s)"
        try:
            async with asyncio.timeout(2), self.read_connection() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except (StorageUnavailableError, TimeoutError) as exc:
            return str(exc) or "the store did not answer within 2 s"
        return None

    # Sessions and messages

    async def create_session(self, session: Session) -> None:
        row = session.model_dump(mode="json")
        row["tools"] = list(session.tools)
        row["created_at"] = session.created_at

        def transaction(conn: sa.Connection) -> None:
            conn.execute(sessions.insert().values(**row))

        await self.write(transaction)

    async def get_session(self, session_id: str) -> Session | None:
        async with self.read_connection() as conn:
            row = (
                await conn.execute(sessions.select().where(sessions.c.session_id == session_id))
            ).first()
        return None if row is None else session_from_row(row)

    async def list_sessions(self, *, limit: int = 100) -> list[Session]:
        query = sessions.select().order_by(sessions.c.created_at.desc()).limit(limit)
        async with self.read_connection() as conn:
            return [session_from_row(row) for row in await conn.execute(query)]

    async def delete_session(self, session_id: str) -> bool:
        def transaction(conn: sa.Connection) -> bool:
            active = ops.active_run_id(conn, session_id)
            if active is not None:
                raise SessionBusyError(session_id, active)
            run_ids = sa.select(runs.c.run_id).where(runs.c.session_id == session_id)
            conn.execute(run_events.delete().where(run_events.c.run_id.in_(run_ids)))
            conn.execute(runs.delete().where(runs.c.session_id == session_id))
            conn.execute(messages.delete().where(messages.c.session_id == session_id))
            result = conn.execute(sessions.delete().where(sessions.c.session_id == session_id))
            return result.rowcount > 0

        return await self.write(transaction)

    async def append_messages(
        self, session_id: str, items: Sequence[Message], *, run_id: str | None
    ) -> None:
        if not items:
            return

        def transaction(conn: sa.Connection) -> None:
            ops.insert_messages(conn, self._rows, session_id, items, run_id)

        await self.write(transaction)

    async def get_messages(self, session_id: str) -> list[Message]:
        query = (
            sa.select(messages.c.body)
            .where(messages.c.session_id == session_id)
            .order_by(messages.c.idx)
        )
        async with self.read_connection() as conn:
            return [_messages.validate_json(body) for body in await conn.scalars(query)]

    # Runs

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

        def transaction(conn: sa.Connection) -> Reservation:
            active = ops.active_run_id(conn, run.session_id)
            if active is None:
                conn.execute(
                    ops.RUN_INSERT,
                    {**row, "queued": False, "owner": owner, "lease_expires_at": lease_expires_at},
                )
                return Reservation(run=run)
            if not queue:
                raise AlreadyRunningError(run.session_id, active)
            order = ops.queue_order(conn, run.session_id, jump_queue)
            conn.execute(ops.RUN_INSERT, {**row, "queued": True, "queue_order": order})
            queued = run.model_copy(update={"queued": True})
            return Reservation(run=queued, active_run_id=active)

        for _ in range(5):
            try:
                return await self.write(transaction)
            except sa.exc.IntegrityError as exc:
                # Another process took the slot between our check and insert: look again.
                if not self.dialect.is_unique_violation(exc):
                    raise
        raise AlreadyRunningError(run.session_id, "unknown")

    async def promote_next(
        self, session_id: str, *, owner: str, lease_expires_at: datetime
    ) -> Run | None:
        def transaction(conn: sa.Connection) -> Run | None:
            if ops.active_run_id(conn, session_id) is not None:
                return None
            next_id = conn.scalar(
                sa.select(runs.c.run_id)
                .where(runs.c.session_id == session_id, ops.QUEUED)
                .order_by(runs.c.queue_order, runs.c.created_at)
                .limit(1)
            )
            if next_id is None:
                return None
            # Compare-and-set: a concurrent promoter may have taken this run first.
            result = conn.execute(
                runs.update()
                .where(runs.c.run_id == next_id, ops.QUEUED)
                .values(
                    queued=False, queue_order=None, owner=owner, lease_expires_at=lease_expires_at
                )
            )
            if result.rowcount != 1:
                return None
            return ops.get_run(conn, next_id)

        try:
            return await self.write(transaction)
        except sa.exc.IntegrityError as exc:
            # A concurrent promoter gave the slot to another queued run.
            if not self.dialect.is_unique_violation(exc):
                raise
            return None

    async def claim_run(
        self,
        run_id: str,
        *,
        owner: str,
        lease_expires_at: datetime,
        started_at: datetime,
        message: Message | None = None,
    ) -> Run | None:
        def transaction(conn: sa.Connection) -> Run | None:
            claimed = conn.execute(
                ops.CLAIM,
                {
                    "b_run_id": run_id,
                    "b_owner": owner,
                    "lease_expires_at": lease_expires_at,
                    "started_at": started_at,
                },
            ).first()
            if claimed is not None:
                run = run_from_row(claimed)
                # A later attempt (after a recovery) may have stored it already.
                first = run.attempt == 1
                if message is not None and (first or not ops.has_run_messages(conn, run_id)):
                    ops.insert_messages(conn, self._rows, run.session_id, [message], run_id)
                return run
            # A run of ours whose cancel was requested while nobody ran it (before a crash or a
            # release, then re-queued): end it now, so that "not claimable" means "ended".
            flagged = conn.execute(
                runs.select().where(runs.c.run_id == run_id, runs.c.owner == owner, ops.SLOT)
            ).first()
            if flagged is not None and flagged.cancel_requested is not None:
                ops.end_cancelled(conn, self._rows, run_from_row(flagged), flagged.cancel_requested)
            return None

        return await self.write(transaction)

    async def renew_leases(
        self, owner: str, run_ids: Sequence[str], lease_expires_at: datetime
    ) -> list[str]:
        if not run_ids:
            return []
        mine = sa.and_(runs.c.owner == owner, runs.c.run_id.in_(list(run_ids)))

        def transaction(conn: sa.Connection) -> list[str]:
            conn.execute(runs.update().where(mine).values(lease_expires_at=lease_expires_at))
            cancelled = conn.scalars(
                sa.select(runs.c.run_id).where(mine, runs.c.cancel_requested.is_not(None))
            )
            return list(cancelled)

        return await self.write(transaction)

    async def finish_run(
        self,
        run_id: str,
        *,
        status: RunStatus,
        error: str | None,
        usage: Usage,
        completed_at: datetime,
    ) -> bool:
        def transaction(conn: sa.Connection) -> bool:
            session_id = conn.scalar(
                ops.FINISH,
                {
                    "b_run_id": run_id,
                    "status": status.value,
                    "error": error,
                    "usage": usage.model_dump(),
                    "completed_at": completed_at,
                },
            )
            if session_id is None:
                return False
            return conn.scalar(ops.QUEUED_RUN, {"b_session_id": session_id}) is not None

        return await self.write(transaction)

    async def request_cancel(self, run_id: str, reason: str) -> Run | None:
        def transaction(conn: sa.Connection) -> Run | None:
            # Lock the row: a concurrent claim must not start the run between look and write.
            locked = runs.select().where(runs.c.run_id == run_id).with_for_update()
            row = conn.execute(locked).first()
            run = None if row is None else run_from_row(row)
            if run is None or run.status.is_terminal:
                return run
            if run.status is RunStatus.PENDING:
                # Nobody executes it yet: end it here, with its terminal event.
                ops.end_cancelled(conn, self._rows, run, reason)
            else:
                conn.execute(
                    runs.update()
                    .where(runs.c.run_id == run_id, runs.c.cancel_requested.is_(None))
                    .values(cancel_requested=reason)
                )
            return ops.get_run(conn, run_id)

        return await self.write(transaction)

    async def get_run(self, run_id: str) -> Run | None:
        async with self.read_connection() as conn:
            return await conn.run_sync(ops.get_run, run_id)

    async def get_active_run(self, session_id: str) -> Run | None:
        async with self.read_connection() as conn:
            row = (
                await conn.execute(runs.select().where(runs.c.session_id == session_id, ops.SLOT))
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
        async with self.read_connection() as conn:
            return [run_from_row(row) for row in await conn.execute(query)]

    async def list_orphan_candidates(self, *, exclude_owner: str) -> list[Orphan]:
        return await self._orphans(sa.or_(runs.c.owner.is_(None), runs.c.owner != exclude_owner))

    async def list_owned_runs(self, owner: str) -> list[Orphan]:
        return await self._orphans(runs.c.owner == owner)

    async def _orphans(self, whose: sa.ColumnElement[bool]) -> list[Orphan]:
        query = runs.select().where(ops.SLOT, whose)
        async with self.read_connection() as conn:
            return [
                Orphan(
                    run=run_from_row(row), owner=row.owner, lease_expires_at=row.lease_expires_at
                )
                for row in await conn.execute(query)
            ]

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

        def transaction(conn: sa.Connection) -> Run | None:
            ended = ending_values(conn, run.run_id)
            if ended is not None:  # it did end: its status just was not stored
                changed = conn.execute(runs.update().where(*same).values(**ended, queued=False))
                return ops.get_run(conn, run.run_id) if changed.rowcount == 1 else None
            result = conn.execute(runs.update().where(*same).values(**values))
            if result.rowcount != 1:
                return None
            seq = ops.last_seq(conn, run.run_id)
            stamped = [
                event.stamped(seq=seq + i, run_id=run.run_id, session_id=run.session_id, ts=now)
                for i, event in enumerate(events, start=1)
            ]
            ops.insert_events(conn, self._rows, stamped)
            ops.update_liveness(conn, stamped)
            return ops.get_run(conn, run.run_id)

        return await self.write(transaction)

    async def release_runs(self, owner: str) -> list[str]:
        mine = sa.and_(runs.c.owner == owner, ops.SLOT)

        def transaction(conn: sa.Connection) -> list[str]:
            run_ids = list(conn.scalars(sa.select(runs.c.run_id).where(mine)))
            if run_ids:
                conn.execute(
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

        return await self.write(transaction)

    async def list_stranded_sessions(self) -> list[str]:
        holder = runs.alias("holder")
        has_holder = sa.exists().where(
            holder.c.session_id == runs.c.session_id,
            holder.c.status.in_(ops.ACTIVE),
            holder.c.queued.is_(False),
        )
        query = sa.select(runs.c.session_id).where(ops.QUEUED).where(~has_holder).distinct()
        async with self.read_connection() as conn:
            return list(await conn.scalars(query))

    async def has_run_messages(self, run_id: str) -> bool:
        async with self.read_connection() as conn:
            return await conn.run_sync(ops.has_run_messages, run_id)

    # Run events

    async def append_events(self, events: Sequence[RunEvent]) -> None:
        if not events:
            return

        # Everything but the statements is done here, on the caller's thread, so the writer
        # (SQLite's runs on a thread of its own) holds the GIL as briefly as it can.
        inserts = ops.prepare_events(self._rows, events)
        liveness = ops.liveness_rows(events)

        def transaction(conn: sa.Connection) -> None:
            inserts.execute(conn)
            conn.execute(ops.LIVENESS_UPDATE, liveness)

        await self.write(transaction)

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
        async with self.read_connection() as conn:
            return [event_from_json(body) for body in await conn.scalars(query)]

    async def last_event_seq(self, run_id: str) -> int:
        async with self.read_connection() as conn:
            return await conn.run_sync(ops.last_seq, run_id)

    async def read_events_of_types(
        self, run_id: str, types: Sequence[str], *, limit: int
    ) -> list[RunEvent]:
        query = (
            sa.select(run_events.c.body)
            .where(run_events.c.run_id == run_id, run_events.c.type.in_(list(types)))
            .order_by(run_events.c.seq.desc())
            .limit(limit)
        )
        async with self.read_connection() as conn:
            bodies = list(await conn.scalars(query))
        return [event_from_json(body) for body in reversed(bodies)]
