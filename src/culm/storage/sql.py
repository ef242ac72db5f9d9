"""``SqlStore``: the store on SQLAlchemy Core, for SQLite and PostgreSQL alike.

Every write is one synchronous function over a connection (``def transaction(conn)``), run as
one transaction by the dialect's :class:`~culm.storage.writer.Writer` (see there for how, and
why a cancel never tears one). Reads run on the async reader engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from functools import partial
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from culm.domain.compaction import Compaction
from culm.domain.events import RunEvent, event_from_json
from culm.domain.models import (
    Message,
    Run,
    RunStatus,
    RunTrigger,
    Session,
    Usage,
)
from culm.errors import AlreadyRunningError, SessionBusyError, StorageUnavailableError
from culm.storage import compactions as compaction_rows
from culm.storage import fencing, migrate, ops, session_reads, takeover, workers
from culm.storage import queue as queue_ops
from culm.storage.base import (
    Ending,
    Fence,
    QueueStats,
    Renewal,
    Reservation,
    SessionState,
    Store,
    SweepPolicy,
    Wakeups,
    WorkerInfo,
)
from culm.storage.dialect import Dialect, dialect_for
from culm.storage.health import StoreHealth, failures_unavailable, is_store_failure, unavailable
from culm.storage.input_store import InputMethods
from culm.storage.reader import Read
from culm.storage.rows import run_from_row, run_to_row, session_from_row, session_to_row
from culm.storage.rowwriter import RowWriter
from culm.storage.schema import compactions as compaction_table
from culm.storage.schema import input_requests, messages, run_events, runs, sessions
from culm.storage.schema import workers as worker_table
from culm.storage.wakeups import PostgresWakeups, Signal, Wake, listen_connect_args
from culm.storage.writer import Write

_T = TypeVar("_T")
# seq is an INTEGER column: 32-bit on PostgreSQL, so a larger cursor is past every event (and
# would not even bind there; the API takes cursors up to 2**63 - 1).
SEQ_LIMIT = 2**31 - 1


def _endings_among(
    endings: Mapping[str, Ending] | None, events: Sequence[RunEvent]
) -> dict[str, Ending]:
    """The ``endings`` of the runs that have events among ``events``."""
    if not endings:
        return {}
    return {run_id: endings[run_id] for run_id in {e.run_id for e in events} & endings.keys()}


class SqlStore(InputMethods, Store):
    def __init__(self, url: str) -> None:
        self.dialect: Dialect = dialect_for(url)
        self._rows = RowWriter(self.dialect.name)
        self.health = StoreHealth()
        self._signal = Signal()  # in-process wake-ups: a run became ready
        self._listeners: weakref.WeakSet[PostgresWakeups] = weakref.WeakSet()

    async def start(self) -> None:
        self._writer, self._reader = self.dialect.create_engines()
        self._reads = self.dialect.reads(self._reader)
        try:
            await self._writer.run(migrate.upgrade)
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        await self._writer.aclose()
        await self._reads.aclose()
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

    async def read(self, fn: Read[_T]) -> _T:
        """Run ``fn(conn)`` as one read transaction and return what it returns (a store
        failure is raised as ``StorageUnavailableError``)."""
        with failures_unavailable():
            return await self._reads.run(fn)

    @contextlib.asynccontextmanager
    async def read_connection(self) -> AsyncIterator[AsyncConnection]:
        with failures_unavailable():
            async with self._reader.connect() as conn:
                yield conn

    async def check(self) -> str | None:
        """None while the store works, else why not: its last write failed, or it cannot be
        read (for a health check)."""
        if self.health.last_error is not None and not await self._served_again():
            return f"{self.health.last_error} (for {self.health.failing_for:.0f} s)"
        try:
            async with asyncio.timeout(2), self.read_connection() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except (StorageUnavailableError, TimeoutError) as exc:
            return str(exc) or "the store did not answer within 2 s"
        return None

    async def _served_again(self) -> bool:
        """After a failed write, whether PostgreSQL commits a write again: a transaction that
        takes a transaction id (its commit goes to the WAL), through the writer, which clears
        the failure. Without it a process that writes nothing of its own (``culm serve
        --no-worker``) stayed degraded after the server came back until a client's write
        succeeded. On SQLite only a real write tells (a full disk still allows this one)."""
        if self.dialect.name != "postgresql":
            return False

        def probe(conn: sa.Connection) -> None:
            conn.execute(sa.text("SELECT txid_current()"))

        try:
            async with asyncio.timeout(2):
                await self.write(probe)
        except (StorageUnavailableError, TimeoutError):
            return False
        return True

    # Sessions and messages

    async def create_session(self, session: Session) -> None:
        row = session_to_row(session)

        def transaction(conn: sa.Connection) -> None:
            conn.execute(sessions.insert().values(**row))

        await self.write(transaction)

    async def get_session(self, session_id: str) -> Session | None:
        return await self.read(partial(session_reads.session, session_id=session_id))

    async def list_sessions(self, *, limit: int = 100) -> list[Session]:
        query = sessions.select().order_by(sessions.c.created_at.desc()).limit(limit)
        return await self.read(lambda conn: [session_from_row(row) for row in conn.execute(query)])

    async def delete_session(self, session_id: str) -> bool:
        def transaction(conn: sa.Connection) -> bool:
            active = ops.active_run_id(conn, session_id)
            if active is not None:
                raise SessionBusyError(session_id, active)
            run_ids = sa.select(runs.c.run_id).where(runs.c.session_id == session_id)
            conn.execute(run_events.delete().where(run_events.c.run_id.in_(run_ids)))
            conn.execute(input_requests.delete().where(input_requests.c.session_id == session_id))
            conn.execute(runs.delete().where(runs.c.session_id == session_id))
            conn.execute(messages.delete().where(messages.c.session_id == session_id))
            conn.execute(
                compaction_table.delete().where(compaction_table.c.session_id == session_id)
            )
            result = conn.execute(sessions.delete().where(sessions.c.session_id == session_id))
            return result.rowcount > 0

        return await self.write(transaction)

    async def append_messages(
        self,
        session_id: str,
        items: Sequence[Message],
        *,
        run_id: str | None,
        fence: Fence | None = None,
    ) -> None:
        if not items:
            return
        if fence is not None and run_id is None:
            raise ValueError("append_messages: a fence needs the run_id it fences")

        def transaction(conn: sa.Connection) -> None:
            if fence is not None and run_id is not None:
                fencing.check_fence(conn, run_id, fence, self._rows)  # runs before messages
            ops.insert_messages(conn, self._rows, session_id, items, run_id)

        await self.write(transaction)

    async def get_messages(self, session_id: str) -> list[Message]:
        return await self.read(partial(session_reads.messages_of, session_id=session_id))

    # Compactions (``compactions.py``)

    async def add_compaction(
        self, compaction: Compaction, *, fence: Fence | None = None, idle: bool = False
    ) -> Compaction:
        run_id = compaction.run_id
        if fence is not None and run_id is None:
            raise ValueError("add_compaction: a fence needs the run_id it fences")

        def transaction(conn: sa.Connection) -> Compaction:
            if fence is not None and run_id is not None:
                fencing.check_fence(conn, run_id, fence, self._rows)  # runs before compactions
            if idle:
                compaction_rows.check_idle(conn, compaction)
            return compaction_rows.insert(conn, compaction)

        return await self.write(transaction)

    async def get_compaction(self, session_id: str) -> Compaction | None:
        return await self.read(partial(session_reads.compaction, session_id=session_id))

    async def get_session_state(self, session_id: str) -> SessionState | None:
        """One read transaction for the three, one hop on SQLite (see ``reader.py``)."""
        return await self.read(partial(session_reads.session_state, session_id=session_id))

    async def list_compactions(self, session_id: str) -> list[Compaction]:
        async with self.read_connection() as conn:
            rows = await conn.execute(compaction_rows.list_query(session_id))
            return [compaction_rows.from_row(row._mapping) for row in rows]

    # Runs (the queue: see ``queue.py``; taking over: ``takeover.py``)

    def _wake(self) -> Wake:
        return Wake(notify=self.dialect.name == "postgresql")

    async def _queue_write(self, fn: Callable[[sa.Connection, Wake], _T]) -> _T:
        """A write that may make a run ready: the in-process wake-up follows its commit."""
        wake = self._wake()
        try:
            return await self.write(lambda conn: fn(conn, wake))
        finally:
            if wake.sent:
                self._signal.fire()

    async def reserve_run(
        self,
        run: Run,
        *,
        queue: bool,
        jump_queue: bool = False,
        owner: str | None = None,
        lease_seconds: float | None = None,
        parent_fence: Fence | None = None,
        session: Session | None = None,
    ) -> Reservation:
        row = run_to_row(run)
        if parent_fence is not None and run.parent_run_id is None:
            raise ValueError("reserve_run: a parent_fence needs the run's parent_run_id")
        if session is not None and session.session_id != run.session_id:
            raise ValueError("reserve_run: the session is not the run's")
        session_row = None if session is None else session_to_row(session)

        def transaction(conn: sa.Connection, wake: Wake) -> Reservation:
            if session_row is not None:
                conn.execute(sessions.insert().values(**session_row))
            return queue_ops.reserve(
                conn,
                self.dialect.name,
                run,
                row,
                queue=queue,
                jump_queue=jump_queue,
                owner=owner,
                lease_seconds=lease_seconds,
                parent_fence=parent_fence,
                wake=wake,
            )

        for _ in range(5):
            try:
                return await self._queue_write(transaction)
            except sa.exc.IntegrityError as exc:
                # Another process took the slot between our check and insert: look again.
                if not self.dialect.is_unique_violation(exc):
                    raise
        raise AlreadyRunningError(run.session_id, "unknown")

    async def claim_runs(
        self,
        owner: str,
        *,
        limit: int,
        lease_seconds: float,
        exclude: Collection[str] = (),
        only: Collection[str] | None = None,
    ) -> list[Run]:
        if limit <= 0:
            return []
        name, skip = self.dialect.name, sorted(exclude)
        picked = None if only is None else sorted(only)
        return await self.write(
            lambda conn: queue_ops.claim(
                conn, name, self._rows, owner, limit, lease_seconds, skip, picked
            )
        )

    async def start_run(
        self, run_id: str, epoch: int, *, owner: str, message: Message | None = None
    ) -> Run | None:
        def transaction(conn: sa.Connection, wake: Wake) -> Run | None:
            return queue_ops.start(
                conn, self.dialect.name, self._rows, run_id, epoch, owner, message, wake
            )

        return await self._queue_write(transaction)

    async def finish_run(
        self,
        run_id: str,
        *,
        fence: Fence | None,
        status: RunStatus,
        error: str | None,
        usage: Usage,
    ) -> None:
        def transaction(conn: sa.Connection, wake: Wake) -> None:
            queue_ops.finish(conn, self.dialect.name, run_id, fence, status, error, usage, wake)

        await self._queue_write(transaction)

    async def renew_leases(
        self, owner: str, fences: Mapping[str, int], lease_seconds: float
    ) -> Renewal:
        if not fences:
            return Renewal(cancel_requested={}, lost=[])
        name = self.dialect.name
        return await self.write(
            lambda conn: queue_ops.renew(conn, name, owner, fences, lease_seconds)
        )

    async def request_cancel(self, run_id: str, reason: str) -> Run | None:
        def transaction(conn: sa.Connection, wake: Wake) -> Run | None:
            return queue_ops.request_cancel(
                conn, self.dialect.name, self._rows, run_id, reason, wake
            )

        return await self._queue_write(transaction)

    async def sweep(
        self, owner: str, policy: SweepPolicy, *, dead_owners: Sequence[str] = ()
    ) -> list[Run]:
        def transaction(conn: sa.Connection, wake: Wake) -> list[Run]:
            return takeover.sweep(conn, self.dialect.name, self._rows, policy, dead_owners, wake)

        return await self._queue_write(transaction)

    async def release_runs(
        self, owner: str, fences: Mapping[str, int], *, clean: bool
    ) -> list[str]:
        def transaction(conn: sa.Connection, wake: Wake) -> list[str]:
            return takeover.release(
                conn, self.dialect.name, self._rows, owner, fences, wake, clean=clean
            )

        return await self._queue_write(transaction)

    async def get_run(self, run_id: str) -> Run | None:
        return await self.read(partial(ops.get_run, run_id=run_id))

    async def get_active_run(self, session_id: str) -> Run | None:
        query = runs.select().where(runs.c.session_id == session_id, ops.SLOT)
        row = await self.read(lambda conn: conn.execute(query).first())
        return None if row is None else run_from_row(row)

    async def list_runs(
        self,
        *,
        session_id: str | None = None,
        status: RunStatus | None = None,
        parent_run_id: str | None = None,
        trigger: RunTrigger | None = None,
        model: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Run]:
        query = runs.select().order_by(runs.c.created_at.desc(), runs.c.run_id)
        query = query.limit(limit).offset(offset)
        if trigger is not None:
            query = query.where(runs.c.trigger == trigger.value)
        if model is not None:
            query = query.where(runs.c.model == model)
        if session_id is not None:
            query = query.where(runs.c.session_id == session_id)
        if status is not None:
            query = query.where(runs.c.status == status.value)
        if parent_run_id is not None:
            query = query.where(runs.c.parent_run_id == parent_run_id)
        return await self.read(lambda conn: [run_from_row(row) for row in conn.execute(query)])

    # Workers

    async def register_worker(
        self,
        worker_id: str,
        *,
        host: str,
        pid: int,
        boot_id: str | None,
        pid_namespace: str | None,
        kind: str,
        concurrency: int,
    ) -> None:
        fields = {
            "host": host,
            "pid": pid,
            "boot_id": boot_id,
            "pid_namespace": pid_namespace,
            "kind": kind,
            "concurrency": concurrency,
        }
        name = self.dialect.name
        await self.write(lambda conn: workers.register(conn, name, worker_id, fields))

    async def worker_heartbeat(
        self, worker_id: str, *, active_runs: int, claims: int, takeovers: int, fenced_writes: int
    ) -> None:
        counters = {
            "active_runs": active_runs,
            "claims": claims,
            "takeovers": takeovers,
            "fenced_writes": fenced_writes,
        }
        name = self.dialect.name
        await self.write(lambda conn: workers.heartbeat(conn, name, worker_id, counters))

    async def stop_worker(self, worker_id: str) -> None:
        name = self.dialect.name
        await self.write(lambda conn: workers.stop(conn, name, worker_id))

    async def get_worker(self, worker_id: str, *, lease_seconds: float = 10.0) -> WorkerInfo | None:
        query = workers.select_workers(self.dialect.name, lease_seconds)
        query = query.where(worker_table.c.worker_id == worker_id)
        async with self.read_connection() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else workers.worker_from_row(row)

    async def list_workers(
        self, *, lease_seconds: float, include_stopped: bool = False
    ) -> list[WorkerInfo]:
        query = workers.select_workers(self.dialect.name, lease_seconds)
        if not include_stopped:
            query = query.where(worker_table.c.stopped_at.is_(None))
        async with self.read_connection() as conn:
            return [workers.worker_from_row(row) for row in await conn.execute(query)]

    async def queue_stats(self) -> QueueStats:
        async with self.read_connection() as conn:
            row = (await conn.execute(workers.select_queue_stats(self.dialect.name))).one()
        return workers.queue_stats_from_row(row)

    def wakeups(self) -> Wakeups:
        if self.dialect.name == "postgresql":
            listener = PostgresWakeups(self._signal, listen_connect_args(self.dialect.url))
            self._listeners.add(listener)
            return listener
        return self._signal.subscribe()

    def wakeups_problem(self) -> str | None:
        """None while every open PostgreSQL listener of this store listens (or there is none),
        else why one does not (its workers then find ready runs by their safety poll only)."""
        for listener in list(self._listeners):
            if listener.problem is not None:
                return listener.problem
        return None

    async def has_run_messages(self, run_id: str) -> bool:
        return await self.read(partial(ops.has_run_messages, run_id=run_id))

    # Run events

    async def append_events(
        self,
        events: Sequence[RunEvent],
        *,
        fences: Mapping[str, Fence] | None = None,
        reserve: int = 0,
        endings: Mapping[str, Ending] | None = None,
    ) -> set[str]:
        left_out: set[str] = set()
        remaining = events
        fences = fences or {}
        while remaining:
            # Prepared here, on the caller's thread, so the writer (SQLite's runs on a thread
            # of its own) holds the GIL as briefly as it can.
            ends = _endings_among(endings, remaining)
            wake = self._wake()
            end = partial(self._end_runs, endings=ends, fences=fences, wake=wake) if ends else None
            batch = fencing.EventBatch(self._rows, remaining, fences, reserve, end)
            try:
                return left_out | await self.write(batch)
            except sa.exc.IntegrityError as exc:
                if not self.dialect.is_unique_violation(exc):
                    raise
                # Looked for only once the database refused the batch (not on every write):
                # a run with one seq twice in the batch, or one already stored.
                clashing = fencing.duplicated_in_batch(batch.events) or await self.write(
                    partial(fencing.stored_already, events=batch.events)
                )
                if not clashing:
                    raise  # not one run's events: nothing to isolate
                left_out |= clashing
                remaining = fencing.without(remaining, clashing)
            finally:
                if wake.sent:
                    self._signal.fire()
        return left_out

    def _end_runs(
        self,
        conn: sa.Connection,
        failed: set[str],
        *,
        endings: Mapping[str, Ending],
        fences: Mapping[str, Fence],
        wake: Wake,
    ) -> None:
        """The endings of the runs whose events were just written (not the ``failed``): their
        final messages, then their ends, in run_id order (rows locked by the fence's look)."""
        for run_id in sorted(endings.keys() - failed):
            ending = endings[run_id]
            if ending.messages:
                ops.insert_messages(conn, self._rows, ending.session_id, ending.messages, run_id)
            fence = fences.get(run_id)
            status, error, usage = ending.status, ending.error, ending.usage
            queue_ops.finish(conn, self.dialect.name, run_id, fence, status, error, usage, wake)

    async def read_events(
        self, run_id: str, *, after: int = 0, limit: int | None = None
    ) -> list[RunEvent]:
        if after >= SEQ_LIMIT:  # past every seq; PostgreSQL refuses such a parameter
            return []
        query = (
            sa.select(run_events.c.body)
            .where(run_events.c.run_id == run_id, run_events.c.seq > max(after, 0))
            .order_by(run_events.c.seq)
        )
        if limit is not None:
            query = query.limit(limit)
        return await self.read(lambda conn: [event_from_json(b) for b in conn.scalars(query)])

    async def last_event_seq(self, run_id: str) -> int:
        return await self.read(partial(ops.last_seq, run_id=run_id, reserved=False))

    async def read_events_of_types(
        self, run_id: str, types: Sequence[str], *, limit: int
    ) -> list[RunEvent]:
        query = (
            sa.select(run_events.c.body)
            .where(run_events.c.run_id == run_id, run_events.c.type.in_(list(types)))
            .order_by(run_events.c.seq.desc())
            .limit(limit)
        )
        bodies = await self.read(lambda conn: list(conn.scalars(query)))
        return [event_from_json(body) for body in reversed(bodies)]
