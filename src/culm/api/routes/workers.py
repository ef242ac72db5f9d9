"""The processes that execute runs, and the run queue (``GET /v1/workers``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from culm.api.deps import EngineDep
from culm.api.schemas import QueueStatus, Worker, WorkerList

router = APIRouter(prefix="/v1/workers", tags=["workers"])


@router.get("")
async def list_workers(
    engine: EngineDep,
    include_stopped: Annotated[
        bool, Query(description="also the workers that stopped cleanly")
    ] = False,
) -> WorkerList:
    """Every worker on the database (``culm worker``, embedded ``culm serve``, ``culm run``),
    oldest first, whether it is alive (heartbeat within the lease), its counters; and the queue:
    pending, ready and running runs, and the oldest pending run's age."""
    workers = await engine.list_workers(include_stopped=include_stopped)
    queue = await engine.queue_stats()
    return WorkerList(
        workers=[Worker.model_validate(worker) for worker in workers],
        queue=QueueStatus.model_validate(queue),
    )
