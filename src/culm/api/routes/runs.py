"""Runs: headless start, list, get, wait, cancel, and their event streams (SSE, WebSocket)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, WebSocket
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from culm.api.deps import EngineDep, ShutdownDep, ws_engine, ws_shutdown
from culm.api.schemas import CreateHeadlessRun, RunList, WaitTimeout
from culm.api.streaming import sse_response, websocket_stream
from culm.domain.models import Run, RunStatus

router = APIRouter(prefix="/v1/runs", tags=["runs"])

Seconds = Annotated[float, Query(ge=0, le=3600)]


@router.post("", status_code=202)
async def create_run(body: CreateHeadlessRun, engine: EngineDep) -> Run:
    """Create a session and start a run on it, in one call."""
    return await engine.run(
        body.message,
        model=body.model,
        system_prompt=body.system_prompt,
        tools=body.tools,
        workspace=body.workspace,
        metadata=body.metadata,
    )


@router.get("")
async def list_runs(
    engine: EngineDep,
    status: RunStatus | None = None,
    session_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> RunList:
    return RunList(runs=await engine.list_runs(session_id=session_id, status=status, limit=limit))


@router.get("/{run_id}")
async def get_run(run_id: str, engine: EngineDep) -> Run:
    return await engine.get_run(run_id)


@router.get("/{run_id}/wait", response_model=Run, responses={408: {"model": WaitTimeout}})
async def wait_run(run_id: str, engine: EngineDep, timeout: Seconds = 30) -> Run | JSONResponse:
    """The run once it is terminal; 408 with the run as it is when ``timeout`` passes."""
    await engine.get_run(run_id)
    try:
        return await engine.wait(run_id, timeout=timeout)
    except TimeoutError:
        run = await engine.get_run(run_id)
        message = f"run {run_id!r} is still {run.status.value} after {timeout:g} s"
        body = {
            "error": {"code": "timeout", "message": message},
            "run": run.model_dump(mode="json"),
        }
        return JSONResponse(body, status_code=408)


@router.post("/{run_id}/cancel", response_model=Run, responses={408: {"model": WaitTimeout}})
async def cancel_run(
    run_id: str, engine: EngineDep, wait: bool = False, timeout: Seconds = 30
) -> Run | JSONResponse:
    """Cancel a run (idempotent). With ``wait=true``, answer once it is terminal."""
    run = await engine.cancel(run_id)
    if not wait:
        return run
    return await wait_run(run_id, engine, timeout)


@router.get(
    "/{run_id}/events",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "run events (SSE)"}},
)
async def run_events(
    run_id: str,
    request: Request,
    engine: EngineDep,
    shutdown: ShutdownDep,
    after: Annotated[int | None, Query(ge=0)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    """Every event with ``seq`` after the cursor (``Last-Event-ID`` or ``after``), then live;
    closes after the terminal event."""
    await engine.get_run(run_id)
    cursor = after if after is not None else _cursor(last_event_id)
    return sse_response(request, engine.subscribe(run_id, after=cursor), shutdown)


def _cursor(last_event_id: str | None) -> int:
    if last_event_id is not None and last_event_id.strip().isdigit():
        return int(last_event_id.strip())
    return 0


@router.websocket("/{run_id}/ws")
async def run_websocket(websocket: WebSocket, run_id: str) -> None:
    """The run's events as JSON text frames; the first client frame may be ``{"after": N}``."""
    await websocket_stream(websocket, ws_engine(websocket), ws_shutdown(websocket), run_id)
