"""The store fails at a run's end, on both backends.

A run's end (its last events, final message, terminal event and status) is one write, the event
batcher's: a failing one is retried as any write of events is, and leaves nothing of the end
until it succeeds. The state "terminal event stored, status not" (which the dispatcher's
``launch_failed`` ending, two writes, can still leave) is ended by a sweeper from that event: it
never appends after a terminal event, nor re-queues such a run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import culm
from culm.domain.events import Complete, RunEvent, is_terminal
from culm.domain.models import RunStatus, Usage
from culm.domain.time import utc_now
from culm.errors import StorageUnavailableError
from culm.storage.base import Ending, Fence, Renewal
from culm.storage.schema import runs
from culm.storage.sql import SqlStore
from tests.support import collect, launched, settings, types


class FinishFailingStore(SqlStore):
    """The real store, but a run's end fails (as a store failure) ``failures`` times first:
    a write of events that carries endings, and ``finish_run``."""

    def __init__(self, url: str, failures: int) -> None:
        super().__init__(url)
        self.failures = failures
        self.failed = 0

    async def append_events(
        self,
        events: Sequence[RunEvent],
        *,
        fences: Mapping[str, Fence] | None = None,
        reserve: int = 0,
        endings: Mapping[str, Ending] | None = None,
    ) -> set[str]:
        if endings and self.failed < self.failures:
            self.failed += 1
            raise StorageUnavailableError("the store is unavailable: disk I/O error")
        return await super().append_events(events, fences=fences, reserve=reserve, endings=endings)

    async def finish_run(
        self,
        run_id: str,
        *,
        fence: Fence | None,
        status: RunStatus,
        error: str | None,
        usage: Usage,
    ) -> None:
        if self.failed < self.failures:
            self.failed += 1
            raise StorageUnavailableError("the store is unavailable: disk I/O error")
        await super().finish_run(run_id, fence=fence, status=status, error=error, usage=usage)


def _engine(tmp_path: Path, url: str, failures: int, **overrides: Any) -> culm.Engine:
    config = settings(tmp_path / "home", database_url=url, scheduler=False, **overrides)
    return culm.Engine(config, store=FinishFailingStore(url, failures))


async def _ends_as_its_terminal_event_says(engine: culm.Engine, run_id: str) -> None:
    run = await engine.wait(run_id, timeout=30)
    events = await collect(engine.subscribe(run_id))
    assert types(events)[-1] == "complete"
    assert "run_recovered" not in types(events)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert run.status is RunStatus.COMPLETED
    assert run.error is None
    assert run.usage == events[-1].usage  # type: ignore[union-attr]
    # The session is free: a new run on it starts and completes.
    again = await engine.start_run(run.session_id, "again")
    assert (await engine.wait(again.run_id, timeout=30)).status is RunStatus.COMPLETED


async def test_a_failing_finish_is_retried_within_the_window(
    tmp_path: Path, database_url: str
) -> None:
    # A long lease: recovery would not end the run within the test; only the retry can.
    engine = _engine(tmp_path, database_url, failures=3, lease_seconds=600.0)
    async with engine:
        run = await engine.run("hi", model="scripted:echo")
        await _ends_as_its_terminal_event_says(engine, run.run_id)
        assert isinstance(engine.store, FinishFailingStore)
        assert engine.store.failed == 3


async def test_a_failing_end_leaves_nothing_of_it_until_it_is_written(
    tmp_path: Path, database_url: str
) -> None:
    # While the end's write fails, neither the terminal event, nor the final message, nor the
    # status is stored (one transaction); once it is written, all of them are.
    engine = _engine(tmp_path, database_url, failures=1_000_000, lease_seconds=600.0)
    async with engine:
        run = await engine.run("hi", model="scripted:echo")
        store = engine.store
        assert isinstance(store, FinishFailingStore)
        async with asyncio.timeout(30):
            while store.failed < 2:  # the end's write failed, and was retried
                await asyncio.sleep(0.01)
        assert not any(is_terminal(e) for e in await store.read_events(run.run_id))
        assert [m.role for m in await store.get_messages(run.session_id)] == ["user"]
        assert (await get_run(store, run.run_id)).status is RunStatus.RUNNING
        store.failures = 0  # the store takes writes again
        await engine.wait(run.run_id, timeout=30)
        assert [m.role for m in await store.get_messages(run.session_id)] == ["user", "assistant"]
        await _ends_as_its_terminal_event_says(engine, run.run_id)


async def test_recovery_sets_the_status_from_a_stored_terminal_event(
    tmp_path: Path, database_url: str
) -> None:
    # The run's terminal event is stored and its status is not (written apart: the process
    # stopped between the two): the next start ends the run as that event says, with nothing
    # appended after it.
    engine = _engine(
        tmp_path, database_url, failures=1_000_000, lease_seconds=600.0, shutdown_timeout=1.0
    )
    async with engine:
        session = await engine.create_session(model="scripted:slow")
        run = await engine.start_run(session.session_id, "go")
        runner = await launched(engine, run.run_id)
        async for event in engine.subscribe(run.run_id):
            if event.type == "token":
                break
        async with asyncio.timeout(30):  # its events so far are stored
            while await engine.store.last_event_seq(run.run_id) < runner.last_seq:
                await asyncio.sleep(0.01)
        # Its next event clashes with this seq: the run is isolated here, writing nothing more.
        complete = Complete(usage=Usage(), final_message="").stamped(
            seq=runner.last_seq + 1, run_id=run.run_id, session_id=run.session_id, ts=utc_now()
        )
        fence = (engine.runs.owner, runner.epoch)
        assert not await engine.store.append_events([complete], fences={run.run_id: fence})
    # Its owner is gone once its lease has run out (this test's process lives on).
    store = SqlStore(database_url)
    await store.start()
    expired = runs.update().values(lease_expires_at=utc_now() - timedelta(seconds=1))
    await store.write(lambda conn: conn.execute(expired.where(runs.c.run_id == run.run_id)))
    await store.aclose()
    async with _engine(tmp_path, database_url, failures=0, recovery_policy="requeue") as engine:
        ended = await engine.wait(run.run_id, timeout=30)
        events = await collect(engine.subscribe(run.run_id))
        assert types(events)[-1] == "complete"
        assert "run_recovered" not in types(events)
        assert ended.status is RunStatus.COMPLETED


async def _ended(engine: culm.Engine, run: culm.Run) -> bool:
    events = await engine.store.read_events(run.run_id)
    return bool(events) and is_terminal(events[-1])


class TerminalRefusingStore(FinishFailingStore):
    """The real store, but it refuses batches holding a terminal event while ``refuse`` is set,
    and hands the run ids each heartbeat renewed to ``renewals``."""

    def __init__(self, url: str) -> None:
        super().__init__(url, failures=0)
        self.refuse = True
        self.renewals: asyncio.Queue[list[str]] = asyncio.Queue()
        self._renewed: list[str] = []

    async def append_events(
        self,
        events: Sequence[RunEvent],
        *,
        fences: Mapping[str, Fence] | None = None,
        reserve: int = 0,
        endings: Mapping[str, Ending] | None = None,
    ) -> set[str]:
        if self.refuse and any(is_terminal(event) for event in events):
            raise StorageUnavailableError("the store is unavailable: disk I/O error")
        return await super().append_events(events, fences=fences, reserve=reserve, endings=endings)

    async def renew_leases(
        self, owner: str, fences: Mapping[str, int], lease_seconds: float
    ) -> Renewal:
        self._renewed += fences
        return await super().renew_leases(owner, fences, lease_seconds)

    async def worker_heartbeat(self, worker_id: str, **counters: int) -> None:
        # The heartbeat's last step: what it renewed this beat (nothing renewed: []).
        self.renewals.put_nowait(self._renewed)
        self._renewed = []
        await super().worker_heartbeat(worker_id, **counters)


async def test_a_run_stuck_finalizing_past_the_window_has_its_lease_no_longer_renewed(
    tmp_path: Path, database_url: str
) -> None:
    store = TerminalRefusingStore(database_url)
    config = settings(
        tmp_path / "home",
        database_url=database_url,
        scheduler=False,
        storage_retry_window=0.5,
        lease_seconds=600.0,
        heartbeat_seconds=0.1,
    )
    async with culm.Engine(config, store=store) as engine:
        run = await engine.run("hi", model="scripted:echo")
        runner = await launched(engine, run.run_id)
        async with asyncio.timeout(30):
            while run.run_id not in await store.renewals.get():  # renewed while it runs
                pass
            while run.run_id in await store.renewals.get():  # then not
                pass
        assert engine.registry.get(run.run_id) is runner and runner.finalizing  # still stuck
        store.refuse = False  # the store takes its end again: the run completes
        assert (await engine.wait(run.run_id, timeout=30)).status is RunStatus.COMPLETED


async def test_a_stop_does_not_wait_out_the_window_for_a_failing_finish(
    tmp_path: Path, database_url: str
) -> None:
    # The retry window is long; a stop gives up on the store after half the shutdown timeout.
    engine = _engine(
        tmp_path, database_url, failures=1_000_000, storage_retry_window=600.0, shutdown_timeout=1.0
    )
    async with engine:
        session = await engine.create_session(model="scripted:slow")
        run = await engine.start_run(session.session_id, "go")
        async for event in engine.subscribe(run.run_id):
            if event.type == "token":
                break
    # The stop cancelled the run: nothing of its end could be stored (the next start's
    # recovery ends it by its policy).
    store = SqlStore(database_url)
    await store.start()
    try:
        assert not any(is_terminal(e) for e in await store.read_events(run.run_id))
        assert (await get_run(store, run.run_id)).status is RunStatus.RUNNING
    finally:
        await store.aclose()


async def get_run(store: SqlStore, run_id: str) -> culm.Run:
    run = await store.get_run(run_id)
    assert run is not None
    return run
