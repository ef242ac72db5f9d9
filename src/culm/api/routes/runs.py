"""Runs: headless start, list, get, wait, cancel, and their event streams (SSE, WebSocket)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, WebSocket
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from culm.api.deps import EngineDep, ShutdownDep, ws_engine, ws_shutdown
from culm.api.openapi import errors, event_stream, wait_timeout
from culm.api.routes.sessions import check_session
from culm.api.schemas import CreateHeadlessRun, RunChild, RunDetail, RunList, TraceParent
from culm.api.streaming import MAX_SEQ, sse_response, websocket_stream
from culm.domain.models import Run, RunStatus, RunTrigger

router = APIRouter(prefix="/v1/runs", tags=["runs"])

Seconds = Annotated[float, Query(ge=0, le=3600)]
UNKNOWN = errors({404: "`not_found`: no run has this id"})
UNKNOWN_NAME = (
    "`invalid_request`: a field is invalid (`field` names it), or an unknown model, tool or "
    "workspace"
)
EVENTS = (
    "the run's events (SSE), closed after the terminal one; the same JSON events come as text "
    "frames from the WebSocket `/v1/runs/{run_id}/ws`"
)
STILL_ACTIVE = wait_timeout("the run is not terminal after `timeout` seconds; `run` is as it is")


@router.post("", status_code=202, responses=errors({422: UNKNOWN_NAME}))
async def create_run(
    body: CreateHeadlessRun, engine: EngineDep, traceparent: TraceParent = None
) -> Run:
    """Create a session and start a run on it, in one call."""
    check_session(engine, body)
    fields = body.model_dump(exclude={"message"})
    return await engine.run(body.message, **fields, traceparent=traceparent)


@router.get("")
async def list_runs(
    engine: EngineDep,
    status: RunStatus | None = None,
    session_id: str | None = None,
    trigger: RunTrigger | None = None,
    model: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> RunList:
    """Newest first, filtered by every parameter given; ``offset`` skips that many (paging)."""
    runs = await engine.list_runs(
        session_id=session_id,
        status=status,
        trigger=trigger,
        model=model,
        limit=limit,
        offset=offset,
    )
    return RunList(runs=runs)


@router.get("/{run_id}", responses=UNKNOWN)
async def get_run(run_id: str, engine: EngineDep) -> RunDetail:
    """The run, its sub-agent runs (``children``) and its usage with theirs."""
    run = await engine.get_run(run_id, descendants_cost=True)
    children = [
        RunChild(run_id=child.run_id, session_id=child.session_id, status=child.status)
        for child in await engine.get_children(run_id)
    ]
    usage = await engine.usage_with_descendants(run_id)
    return RunDetail(**run.model_dump(), children=children, usage_with_descendants=usage)


@router.get("/{run_id}/wait", response_model=Run, responses={**UNKNOWN, **STILL_ACTIVE})
async def wait_run(run_id: str, engine: EngineDep, timeout: Seconds = 30) -> Run | JSONResponse:
    """The run once it is terminal; 408 with the run as it is when ``timeout`` passes."""
    await engine.get_run(run_id)
    try:
        return await engine.wait(run_id, timeout=timeout)
    except TimeoutError:
        return await _still_active(run_id, engine, timeout)


async def _still_active(run_id: str, engine: EngineDep, timeout: float) -> Run | JSONResponse:
    """The run if it ended right at the deadline, else 408 with the run as it is."""
    run = await engine.get_run(run_id)
    if run.status.is_terminal:  # it ended right at the deadline
        return run
    message = f"run {run_id!r} is still {run.status.value} after {timeout:g} s"
    body = {"error": {"code": "timeout", "message": message}, "run": run.model_dump(mode="json")}
    return JSONResponse(body, status_code=408)


@router.post("/{run_id}/cancel", response_model=Run, responses={**UNKNOWN, **STILL_ACTIVE})
async def cancel_run(
    run_id: str, engine: EngineDep, wait: bool = False, timeout: Seconds = 30
) -> Run | JSONResponse:
    """Cancel a run (idempotent). With ``wait=true``, answer once it and every sub-agent run
    below it are terminal."""
    if not wait:
        return await engine.cancel(run_id)
    try:
        return await engine.cancel(run_id, wait=True, timeout=timeout)
    except TimeoutError:
        return await _still_active(run_id, engine, timeout)


@router.get(
    "/{run_id}/events",
    response_class=EventSourceResponse,
    responses={**event_stream(EVENTS), **UNKNOWN},
)
async def run_events(
    run_id: str,
    request: Request,
    engine: EngineDep,
    shutdown: ShutdownDep,
    after: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    """Every event with ``seq`` after the cursor (``Last-Event-ID`` or ``after``), then live;
    closes after the terminal event."""
    await engine.check_run(run_id)
    cursor = after if after is not None else _cursor(last_event_id)
    return sse_response(request, engine.subscribe_batches(run_id, after=cursor), shutdown)


def _cursor(last_event_id: str | None) -> int:
    """The ``Last-Event-ID`` as a cursor: 0 if it is not a number, at most the largest seq (a
    number longer than any seq is not converted: Python refuses over 4,300 digits)."""
    value = (last_event_id or "").strip().lstrip("0") or "0"
    if not (value.isascii() and value.isdigit()):  # not "²": isdigit is true for it, int() fails
        return 0
    return MAX_SEQ if len(value) > len(str(MAX_SEQ)) else min(int(value), MAX_SEQ)


@router.websocket("/{run_id}/ws")
async def run_websocket(websocket: WebSocket, run_id: str) -> None:
    """The run's events as JSON text frames, from ``?after=N``, else from the client's first
    frame ``{"after": N}`` (or ``{}``), waited for up to 5 s."""
    await websocket_stream(websocket, ws_engine(websocket), ws_shutdown(websocket), run_id)
