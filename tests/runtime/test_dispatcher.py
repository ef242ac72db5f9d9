"""The dispatcher of one worker on SQLite: how it drains a backlog of ready runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import culm
from culm.runtime.roles import Role
from tests.support import settings

pytestmark = pytest.mark.timeout(60)

QUICK = {"turns": [[{"text": "done"}]]}


def _engine(home: Path, role: Role, **overrides: Any) -> culm.Engine:
    return culm.Engine(settings(home, heartbeat_seconds=0.1, **overrides), role=role)


async def test_a_full_worker_claims_the_backlog_as_its_runs_end_without_waiting_for_the_poll(
    tmp_path: Path,
) -> None:
    # Six ready runs in six sessions, reserved before any worker runs: ending one of them
    # wakes nobody (no session has a queued run), so only the worker's own "a run ended here"
    # can start the next. The safety poll is an hour: without that, the test times out.
    api = _engine(tmp_path, Role.API)
    async with api:
        api.scripts.register("quick", QUICK)
        run_ids = []
        for _ in range(6):
            session = await api.create_session(model="scripted:quick")
            run = await api.start_run(session.session_id, "go")
            run_ids.append(run.run_id)
    worker = _engine(tmp_path, Role.WORKER, worker_concurrency=2, claim_poll_seconds=3600)
    async with worker:
        worker.scripts.register("quick", QUICK)
        for run_id in run_ids:
            done = await worker.wait(run_id, timeout=20)
            assert done.status is culm.RunStatus.COMPLETED
        assert worker.counters.claims == 6
