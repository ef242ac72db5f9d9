"""``SqlStore``'s people-in-the-loop methods (``culm.input``): thin async wrappers over the
transactions of :mod:`culm.storage.inputs`, mixed into :class:`~culm.storage.sql.SqlStore`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from culm.domain.events import RunEvent
from culm.domain.input import InputAnswer, InputRequest
from culm.domain.models import Message, RunStatus, Usage
from culm.storage import inputs
from culm.storage.base import Fence
from culm.storage.dialect import Dialect
from culm.storage.ops import SLOT_STATUSES
from culm.storage.rowwriter import RowWriter
from culm.storage.schema import runs
from culm.storage.wakeups import Wake
from culm.storage.writer import Write

_T = TypeVar("_T")


class _Host(Protocol):
    """What the methods need of the store they are mixed into."""

    dialect: Dialect
    _rows: RowWriter

    async def write(self, fn: Write[_T]) -> _T: ...

    async def _queue_write(self, fn: Callable[[sa.Connection, Wake], _T]) -> _T: ...

    def read_connection(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]: ...


class InputMethods:
    async def park_run(
        self: _Host,
        run_id: str,
        *,
        fence: Fence,
        messages: Sequence[Message],
        requests: Sequence[Mapping[str, object]],
        events: Sequence[RunEvent],
        usage: Usage,
        timeout: float | None,
    ) -> RunStatus:
        values = [dict(request) for request in requests]

        def transaction(conn: sa.Connection, wake: Wake) -> RunStatus:
            return inputs.park(
                conn,
                self.dialect.name,
                self._rows,
                run_id=run_id,
                fence=fence,
                messages=messages,
                requests=values,
                events=events,
                usage=usage,
                timeout=timeout,
                wake=wake,
            )

        return await self._queue_write(transaction)

    async def answer_input(
        self: _Host, run_id: str, request_id: str, answer: InputAnswer
    ) -> tuple[InputRequest, list[RunEvent]]:
        def transaction(conn: sa.Connection, wake: Wake) -> tuple[InputRequest, list[RunEvent]]:
            return inputs.answer(
                conn, self.dialect.name, self._rows, run_id, request_id, answer, wake
            )

        return await self._queue_write(transaction)

    async def expire_input(self: _Host) -> list[RunEvent]:
        def transaction(conn: sa.Connection, wake: Wake) -> list[RunEvent]:
            return inputs.expire(conn, self.dialect.name, self._rows, wake)

        return await self._queue_write(transaction)

    async def list_input(
        self: _Host, run_ids: Sequence[str], *, statuses: Sequence[str] | None = ("open",)
    ) -> list[InputRequest]:
        if not run_ids:
            return []
        async with self.read_connection() as conn:
            rows = await conn.execute(inputs.requests_query(run_ids, statuses))
            return [inputs.request_from_row(row) for row in rows]

    async def resolve_input(
        self: _Host,
        run_id: str,
        *,
        fence: Fence,
        messages: Sequence[Message],
        request_ids: Sequence[str],
    ) -> None:
        await self.write(
            lambda conn: inputs.resolve(conn, self._rows, run_id, fence, messages, request_ids)
        )

    async def input_counts(self: _Host) -> list[tuple[str, str, int]]:
        async with self.read_connection() as conn:
            rows = await conn.execute(inputs.COUNTS)
            return [(str(row[0]), str(row[1]), int(row[2])) for row in rows]

    async def waiting_below(self: _Host, run_id: str, depth: int) -> list[str]:
        """The run and its descendants (``depth`` levels down) that wait for a person: one
        read per level, however many children."""
        found: list[str] = []
        level = [run_id]
        async with self.read_connection() as conn:
            for below in range(depth + 1):
                query = sa.select(runs.c.run_id, runs.c.status).where(
                    (runs.c.run_id if below == 0 else runs.c.parent_run_id).in_(level),
                    runs.c.status.in_(SLOT_STATUSES),
                )
                rows = (await conn.execute(query.order_by(runs.c.created_at))).all()
                found += [row.run_id for row in rows if row.status == RunStatus.WAITING.value]
                level = [row.run_id for row in rows]
                if not level:
                    break
        return found
