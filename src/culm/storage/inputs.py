"""The store's side of people in the loop (``culm.input``): the write transactions that park a
run to wait for a person, answer its requests, expire them, and resume it.

Parking is one transaction, fenced on the run's claim: the round's messages, the requests, the
``input_requested`` events (stamped by the runner after everything it emitted is stored), then
the run ``waiting``, unowned, no lease, epoch + 1. So a request exists, and its run waits, before
any client can see it. A waiting run is written by the store alone: an answer writes its
``input_received`` event itself (the next seq) and, once no request of the run is open, makes
the run ready (``pending``, unowned) with a wake-up; any worker claims it and resumes it. An
expired request (``expires_at``, database time, checked by every sweep) is denied the same way,
or ends its run in error (``input_timeout``) by the session's ``input_timeout_action``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from culm.domain.events import Error, InputReceived, RunEvent, RunEventBase
from culm.domain.input import InputAnswer, InputRequest
from culm.domain.models import Message, RunStatus, Usage
from culm.errors import InputConflictError, InvalidFieldError, NotFoundError
from culm.storage import dbtime, fencing, ops
from culm.storage.base import Fence
from culm.storage.queue import promote_next
from culm.storage.rows import run_from_row
from culm.storage.rowwriter import RowWriter
from culm.storage.schema import input_requests, runs, sessions
from culm.storage.wakeups import Wake

INPUT_TIMEOUT = "input_timeout"
EXPIRE_LIMIT = 200  # requests per sweep; the next tick takes the rest
OPEN = ops.constant("open")  # written into the SQL: see ``ops.constant``
_RUN_FOR_UPDATE = runs.select().where(runs.c.run_id == sa.bindparam("run_id")).with_for_update()


def park(
    conn: sa.Connection,
    dialect: str,
    rows: RowWriter,
    *,
    run_id: str,
    fence: Fence,
    messages: Sequence[Message],
    requests: Sequence[dict[str, Any]],
    events: Sequence[RunEvent],
    usage: Usage,
    timeout: float | None,
    wake: Wake,
) -> RunStatus:
    """Store the round and its requests and make the run wait; ``LeaseLostError`` when the
    fence fails. A cancel requested meanwhile wins: the run ends ``cancelled`` instead."""
    fencing.check_fence(conn, run_id, fence, rows)
    row = conn.execute(_RUN_FOR_UPDATE, {"run_id": run_id}).one()
    ops.insert_messages(conn, rows, row.session_id, messages, run_id)
    if row.cancel_requested is not None:
        ops.end_cancelled(conn, rows, run_from_row(row), row.cancel_requested)
        promote_next(conn, row.session_id, wake)
        return RunStatus.CANCELLED
    now = dbtime.read_now(conn, dialect)
    expires = now + timedelta(seconds=timeout) if timeout is not None else None
    values = [
        {
            **request,
            "run_id": run_id,
            "session_id": row.session_id,
            "status": "open",
            "attempt": row.attempt,
            "created_at": now,
            "expires_at": expires,
            "position": position,  # the call's place in the round: the order they are shown
        }
        for position, request in enumerate(requests)
    ]
    conn.execute(input_requests.insert(), values)
    ops.insert_events(conn, rows, events, {run_id: fence[1]})
    ops.update_liveness(conn, events)
    conn.execute(
        runs.update()
        .where(runs.c.run_id == run_id)
        .values(
            status=RunStatus.WAITING.value,
            owner=None,
            lease_expires_at=None,
            epoch=row.epoch + 1,
            usage=usage.model_dump(),
        )
    )
    return RunStatus.WAITING


def answer(
    conn: sa.Connection,
    dialect: str,
    rows: RowWriter,
    run_id: str,
    request_id: str,
    given: InputAnswer,
    wake: Wake,
) -> tuple[InputRequest, list[RunEvent]]:
    """Record a person's answer and its ``input_received`` event; the run is ready again once
    none of its requests is open. The same answer again returns the request as answered (no
    event); a different one, or an answer to a request no longer open, is refused
    (``InputConflictError``, with the request as it stands)."""
    run = conn.execute(_RUN_FOR_UPDATE, {"run_id": run_id}).first()
    if run is None:
        raise NotFoundError("run", run_id)
    found = conn.execute(
        input_requests.select().where(
            input_requests.c.request_id == request_id, input_requests.c.run_id == run_id
        )
    ).first()
    if found is None:
        raise NotFoundError("input request", request_id)
    request = request_from_row(found)
    if request.status != "open":
        if request.answer == given:
            return request, []  # the same answer again: idempotent
        raise InputConflictError(request, "the request was answered already")
    if run.status != RunStatus.WAITING.value:
        raise InputConflictError(request, f"the run is not waiting (it is {run.status})")
    problem = given.problem(request.kind)
    if problem is not None:
        raise InvalidFieldError(*problem)
    now = dbtime.read_now(conn, dialect)
    closed = _close(conn, request, given, "answered", now)
    assert closed is not None  # the run's row is locked: nothing else answers it meanwhile
    event = _received(conn, rows, closed, given, now)
    request = closed
    _resume_if_answered(conn, run_id, wake)
    return request, [event]


def _close(
    conn: sa.Connection, request: InputRequest, given: InputAnswer, status: str, now: datetime
) -> InputRequest | None:
    """Answer ``request`` if it is still open (None if it is not: answered, or closed, since
    the caller read it)."""
    closed = conn.execute(
        input_requests.update()
        .where(input_requests.c.request_id == request.request_id)
        .where(input_requests.c.status == OPEN)
        .values(
            status=status,
            answer=given.model_dump(exclude_none=True),
            outcome=given.outcome(request.kind),
            answered_at=now,
        )
    )
    if closed.rowcount != 1:
        return None
    update = {"status": status, "answer": given, "answered_at": now}
    return request.model_copy(update=update)


def _received(
    conn: sa.Connection, rows: RowWriter, request: InputRequest, given: InputAnswer, now: datetime
) -> RunEvent:
    """Append the request's ``input_received`` (the run is waiting: no runner writes it)."""
    event = InputReceived(
        request_id=request.request_id,
        kind=request.kind,
        tool_call_id=request.tool_call_id,
        tool_name=request.tool_name,
        approve=given.approve,
        reason=given.reason,
        arguments=given.arguments,
        answer=given.answer,
        timed_out=given.timed_out,
    )
    return _append(conn, rows, event, request, now)


def _append(
    conn: sa.Connection, rows: RowWriter, event: RunEventBase, request: InputRequest, now: datetime
) -> RunEvent:
    """Append an event the store writes for a run nobody executes (at the next seq)."""
    seq = ops.last_seq(conn, request.run_id) + 1
    stamped = event.stamped(seq=seq, run_id=request.run_id, session_id=request.session_id, ts=now)
    ops.insert_events(conn, rows, [stamped])
    ops.update_liveness(conn, [stamped])
    return stamped


def _resume_if_answered(conn: sa.Connection, run_id: str, wake: Wake) -> None:
    still_open = sa.exists().where(
        input_requests.c.run_id == run_id, input_requests.c.status == OPEN
    )
    ready = (
        runs.update()
        .where(runs.c.run_id == run_id, runs.c.status == RunStatus.WAITING.value, ~still_open)
        .values(status=RunStatus.PENDING.value, owner=None, lease_expires_at=None)
    )
    if conn.execute(ready).rowcount == 1:
        wake(conn)


def expire(conn: sa.Connection, dialect: str, rows: RowWriter, wake: Wake) -> list[RunEvent]:
    """Answer the open requests of waiting runs whose ``expires_at`` passed: denied (with
    ``timed_out``), or the run ended ``error`` (code ``input_timeout``) when its session says
    so. Returns the events written."""
    now = dbtime.read_now(conn, dialect)
    return expire_due(conn, rows, due(conn, now), now, wake)


def due(conn: sa.Connection, now: datetime) -> list[Any]:
    """The open requests of waiting runs expired at ``now`` (read unlocked: ``expire_due``
    locks each run, and answers a request only if it is still open then)."""
    return list(
        conn.execute(
            sa.select(input_requests, sessions.c.input_timeout_action, sessions.c.input_timeout)
            .join(runs, runs.c.run_id == input_requests.c.run_id)
            .join(sessions, sessions.c.session_id == input_requests.c.session_id)
            .where(input_requests.c.status == OPEN, input_requests.c.expires_at <= now)
            .where(runs.c.status == RunStatus.WAITING.value)
            .order_by(input_requests.c.run_id, input_requests.c.position)
            .limit(EXPIRE_LIMIT)
        ).all()
    )


def expire_due(
    conn: sa.Connection, rows: RowWriter, found: Sequence[Any], now: datetime, wake: Wake
) -> list[RunEvent]:
    events: list[RunEvent] = []
    ended: set[str] = set()
    for row in found:
        if row.run_id in ended:
            continue
        locked = conn.execute(
            runs.select().where(runs.c.run_id == row.run_id).with_for_update(skip_locked=True)
        ).first()
        if locked is None or locked.status != RunStatus.WAITING.value:
            continue  # answered or ended meanwhile, or another sweeper has it
        timed_out = InputAnswer(approve=False, timed_out=True)
        request = _close(conn, request_from_row(row), timed_out, "expired", now)
        if request is None:
            continue  # a person answered it since it was read
        events.append(_received(conn, rows, request, timed_out, now))
        if row.input_timeout_action == "error":
            events.append(_end_timed_out(conn, rows, request, row.input_timeout, now, wake))
            ended.add(row.run_id)
        else:
            _resume_if_answered(conn, row.run_id, wake)
    return events


def _end_timed_out(
    conn: sa.Connection,
    rows: RowWriter,
    request: InputRequest,
    timeout: float | None,
    now: datetime,
    wake: Wake,
) -> RunEvent:
    message = f"no answer to {request.kind} request {request.request_id!r} ({request.tool_name})"
    message += f" within the input timeout of {timeout or 0:g} s"
    event = _append(conn, rows, Error(message=message, code=INPUT_TIMEOUT), request, now)
    conn.execute(
        runs.update()
        .where(runs.c.run_id == request.run_id)
        .values(status=RunStatus.ERROR.value, error=message, completed_at=now, queued=False)
    )
    ops.close_requests(conn, [request.run_id])  # its other requests end with it
    promote_next(conn, request.session_id, wake)
    return event


def resolve(
    conn: sa.Connection,
    rows: RowWriter,
    run_id: str,
    fence: Fence,
    messages: Sequence[Message],
    request_ids: Sequence[str],
) -> None:
    """A resumed run stores its waiting calls' results and marks their requests applied."""
    fencing.check_fence(conn, run_id, fence, rows)
    if messages:
        session_id = conn.execute(
            sa.select(runs.c.session_id).where(runs.c.run_id == run_id)
        ).scalar_one()
        ops.insert_messages(conn, rows, session_id, messages, run_id)
    if request_ids:
        conn.execute(
            input_requests.update()
            .where(input_requests.c.request_id.in_(list(request_ids)))
            .where(input_requests.c.status.in_(("answered", "expired")))
            .values(status="applied")
        )


def requests_query(run_ids: Sequence[str], statuses: Sequence[str] | None) -> sa.Select[Any]:
    query = (
        input_requests.select()
        .where(input_requests.c.run_id.in_(list(run_ids)))
        .order_by(input_requests.c.created_at, input_requests.c.position)
    )
    if statuses is not None:
        query = query.where(input_requests.c.status.in_(list(statuses)))
    return query


COUNTS = (
    sa.select(input_requests.c.tool_name, input_requests.c.outcome, sa.func.count().label("count"))
    .where(input_requests.c.outcome.is_not(None))
    .group_by(input_requests.c.tool_name, input_requests.c.outcome)
)


def request_from_row(row: Any) -> InputRequest:
    return InputRequest(
        request_id=row.request_id,
        run_id=row.run_id,
        session_id=row.session_id,
        kind=row.kind,
        tool_call_id=row.tool_call_id,
        tool_name=row.tool_name,
        arguments=row.arguments,
        question=row.question,
        choices=row.choices,
        created_at=row.created_at,
        expires_at=row.expires_at,
        status=row.status,
        answer=InputAnswer(**row.answer) if row.answer else None,
        answered_at=row.answered_at,
        attempt=row.attempt,
    )
