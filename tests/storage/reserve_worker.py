"""A separate process that hammers ``reserve_run`` (used by the two-process store test).

    python reserve_worker.py URL OWNER MODE ATTEMPTS SESSION_ID...

It opens the store, prints ``ready``, waits for a line on stdin (the start signal, so that both
processes begin together), then for every session, concurrently, makes ATTEMPTS reservations:

- ``hold``: alternately plain and queued; nothing is released.
- ``cycle``: plain; every won run is finished at once, freeing the slot for the next taker.

It prints one JSON object: ``won`` [session, run_id], ``queued`` [session, run_id, active],
``rejected`` [session, active run_id] and ``errors`` (anything else raised).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from culm.domain.models import Run, RunStatus, Usage
from culm.domain.time import new_id
from culm.errors import AlreadyRunningError
from culm.storage.sql import SqlStore


async def _attempt(
    store: SqlStore, session_id: str, owner: str, mode: str, i: int, out: dict[str, list[Any]]
) -> None:
    run = Run(run_id=new_id(), session_id=session_id, model="scripted:demo")
    queue = mode == "hold" and i % 2 == 1
    try:
        if queue:
            reservation = await store.reserve_run(run, queue=True)
        else:
            reservation = await store.reserve_run(run, queue=False, owner=owner, lease_seconds=300)
    except AlreadyRunningError as exc:
        out["rejected"].append([session_id, exc.run_id])
        return
    if reservation.active_run_id is not None:
        out["queued"].append([session_id, run.run_id, reservation.active_run_id])
        return
    out["won"].append([session_id, run.run_id])
    if mode == "cycle":
        await store.finish_run(
            run.run_id,
            fence=(owner, 1),
            status=RunStatus.COMPLETED,
            error=None,
            usage=Usage(),
        )


async def _hammer(
    store: SqlStore,
    session_id: str,
    owner: str,
    mode: str,
    attempts: int,
    out: dict[str, list[Any]],
) -> None:
    for i in range(attempts):
        try:
            await _attempt(store, session_id, owner, mode, i, out)
        except Exception as exc:
            out["errors"].append(f"{type(exc).__name__}: {exc}")


async def main(url: str, owner: str, mode: str, attempts: int, session_ids: list[str]) -> None:
    store = SqlStore(url)
    await store.start()
    out: dict[str, list[Any]] = {"won": [], "queued": [], "rejected": [], "errors": []}
    try:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        async with asyncio.TaskGroup() as group:
            for session_id in session_ids:
                group.create_task(_hammer(store, session_id, owner, mode, attempts, out))
    finally:
        await store.aclose()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    url, owner, mode, attempts, *sessions = sys.argv[1:]
    asyncio.run(main(url, owner, mode, int(attempts), sessions))
