"""Restart reconciliation and clean shutdown: nothing stays `running`."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

import culm
from culm.storage.sql import SqlStore
from tests.support import accounted, collect, launched, settings, types

WORKER = Path(__file__).with_name("crash_worker.py")
REQUEUE_WORKER = Path(__file__).with_name("requeue_worker.py")

# SQLite only: these take over a killed process's runs at the next start (embedded fast
# restart, by pid). On PostgreSQL (distributed) a dead owner is found by its lease only; the
# distributed tests (tests/distributed) cover that.
SQLITE_FAST_RESTART = pytest.mark.backends("sqlite")


def _engine(engine_settings: culm.Settings, script: dict[str, object]) -> culm.Engine:
    """An engine whose `scripted:stuck` is ready before start-up recovery runs anything."""
    engine = culm.Engine(engine_settings)
    engine.scripts.register("stuck", script)
    return engine


async def _crashed_runs(home: Path, count: int) -> list[tuple[str, str]]:
    """Start ``count`` runs (each with one run queued behind it) in a process, then SIGKILL it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), str(home), str(count), stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    pairs = []
    async with asyncio.timeout(30):
        for _ in range(count):
            active, queued = (await process.stdout.readline()).decode().split()
            pairs.append((active, queued))
        await asyncio.sleep(0.3)  # let the runs emit and store a few events
    process.send_signal(signal.SIGKILL)
    await process.wait()
    return pairs


@pytest.mark.timeout(90)
@SQLITE_FAST_RESTART
async def test_runs_of_a_killed_process_end_as_interrupted_on_start(tmp_path: Path) -> None:
    pairs = await _crashed_runs(tmp_path, 3)
    engine = _engine(settings(tmp_path), {"turns": [[{"text": "resumed"}]]})
    async with engine:
        for active, queued in pairs:
            run = await engine.get_run(active)
            assert run.status is culm.RunStatus.ERROR
            assert run.error == "interrupted"
            events = await collect(engine.subscribe(active))
            assert types(events)[0] == "execution_started"
            # The seqs reserved for events shown before they were stored are never used again.
            assert types(events)[-3:] == ["gap", "run_recovered", "error"]
            assert events[-2].action == "errored"  # type: ignore[union-attr]
            assert accounted(events) == list(range(1, events[-1].seq + 1))
            # The run queued behind it was started once the slot was free.
            after = await engine.wait(queued, timeout=10)
            assert after.status is culm.RunStatus.COMPLETED
        assert await engine.list_runs(status="running") == []


@pytest.mark.timeout(90)
@SQLITE_FAST_RESTART
async def test_requeue_policy_runs_an_interrupted_run_again(tmp_path: Path) -> None:
    [(active, _queued)] = await _crashed_runs(tmp_path, 1)
    engine = _engine(settings(tmp_path, recovery_policy="requeue"), {"turns": [[{"text": "2"}]]})
    async with engine:
        run = await engine.wait(active, timeout=10)
        assert run.status is culm.RunStatus.COMPLETED
        assert run.attempt == 2
        events = await collect(engine.subscribe(active))
        recovered = types(events).index("run_recovered")
        assert events[recovered].action == "requeued"  # type: ignore[union-attr]
        assert types(events)[recovered + 1] == "execution_started"
        assert events[recovered + 1].attempt == 2  # type: ignore[union-attr]
        assert types(events).count("execution_started") == 2
        assert types(events)[recovered - 1] == "gap"
        assert accounted(events) == list(range(1, events[-1].seq + 1))
        transcript = await engine.get_messages(run.session_id)
        # The run's input is not appended twice (the run queued behind it may add its own).
        assert [m.content for m in transcript if m.role == "user"].count("go") == 1


async def _requeued_then_killed(home: Path, run_id: str, max_attempts: int) -> str:
    """Start an engine in a process with the requeue policy, read what it says about
    ``run_id`` (``running <attempt>`` or ``ended <status>``), then SIGKILL it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REQUEUE_WORKER),
        str(home),
        str(max_attempts),
        run_id,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    async with asyncio.timeout(30):
        said = (await process.stdout.readline()).decode().strip()
    process.send_signal(signal.SIGKILL)
    await process.wait()
    return said


@pytest.mark.timeout(120)
@SQLITE_FAST_RESTART
async def test_requeue_runs_again_up_to_max_attempts_then_errors(tmp_path: Path) -> None:
    """max_attempts=2: the first interruption re-queues (attempt 2), the second ends the run."""
    [(active, _)] = await _crashed_runs(tmp_path, 1)
    assert await _requeued_then_killed(tmp_path, active, max_attempts=2) == "running 2"
    overrides = {"recovery_policy": "requeue", "max_attempts": 2}
    async with culm.Engine(settings(tmp_path, **overrides)) as engine:
        run = await engine.get_run(active)
        assert run.status is culm.RunStatus.ERROR
        assert run.error == "interrupted"
        assert run.attempt == 2
        events = await collect(engine.subscribe(active))
        recovered = [e for e in events if e.type == "run_recovered"]
        assert [(e.previous_attempt, e.action) for e in recovered] == [  # type: ignore[union-attr]
            (1, "requeued"),
            (2, "errored"),
        ]
        assert accounted(events) == list(range(1, events[-1].seq + 1))


async def test_clean_shutdown_cancels_active_runs(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path)) as engine:
        run = await engine.run("go", model="scripted:slow")
        queued = await engine.start_run(
            run.session_id, "next", multitask="enqueue", model="scripted:echo"
        )
        await launched(engine, run.run_id)
    async with culm.Engine(settings(tmp_path)) as engine:
        ended = await engine.get_run(run.run_id)
        assert ended.status is culm.RunStatus.CANCELLED
        events = await collect(engine.subscribe(run.run_id))
        assert events[-1].type == "cancelled"
        assert events[-1].reason == "shutdown"  # type: ignore[union-attr]
        # The queued run was not started by the stopping engine; this start runs it.
        assert (await engine.wait(queued.run_id, timeout=30)).status.is_terminal


async def test_shutdown_policy_recover_hands_runs_back(tmp_path: Path) -> None:
    engine_settings = settings(tmp_path, shutdown_policy="recover", recovery_policy="requeue")
    async with culm.Engine(engine_settings) as engine:
        engine.scripts.register("stuck", {"turns": [[{"text": "a"}, {"delay": 3600}]]})
        run = await engine.run("go", model="scripted:stuck")
        await launched(engine, run.run_id)
    # The stopped engine left nothing `running`: the run is ready again, for any worker.
    store = SqlStore(engine_settings.resolved_database_url)
    await store.start()
    try:
        row = await store.get_run(run.run_id)
        assert row is not None and row.status is culm.RunStatus.PENDING
        assert row.attempt == 2
        stats = await store.queue_stats()
        assert (stats.ready, stats.running) == (1, 0)
    finally:
        await store.aclose()
    async with _engine(engine_settings, {"turns": [[{"text": "finished now"}]]}) as engine:
        done = await engine.wait(run.run_id, timeout=10)
        assert done.status is culm.RunStatus.COMPLETED
        assert done.attempt == 2


async def test_shutdown_grace_lets_short_runs_finish(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path, shutdown_grace=5)) as engine:
        engine.scripts.register("short", {"turns": [[{"delay": 0.2}, {"text": "done"}]]})
        run = await engine.run("go", model="scripted:short")
        await launched(engine, run.run_id)  # claimed (one not yet claimed stays ready)
    async with culm.Engine(settings(tmp_path)) as engine:
        assert (await engine.get_run(run.run_id)).status is culm.RunStatus.COMPLETED


async def test_a_closed_engine_refuses_work(tmp_path: Path) -> None:
    engine = culm.Engine(settings(tmp_path))
    with pytest.raises(culm.CulmError):
        await engine.list_runs()
    async with engine:
        pass
    with pytest.raises(culm.CulmError):
        await engine.list_runs()


@pytest.mark.timeout(90)
async def test_no_seq_a_live_client_saw_is_reused_after_a_crash(tmp_path: Path) -> None:
    """Events are shown before they are stored (within the run's committed seq reservation):
    what a subscriber saw before the process died is either stored as it saw it or inside the
    replay's gap, and recovery numbers its events after every seq it saw."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), str(tmp_path), "1", "watch", stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    seen: list[tuple[int, str]] = []
    async with asyncio.timeout(30):
        run_id = (await process.stdout.readline()).decode().strip()
        while len(seen) < 300:
            _, seq, kind = (await process.stdout.readline()).decode().split()
            seen.append((int(seq), kind))
    process.send_signal(signal.SIGKILL)
    await process.wait()
    async with culm.Engine(settings(tmp_path)) as engine:
        events = await collect(engine.subscribe(run_id))
    stored = {e.seq: e.type for e in events if e.type != "gap"}
    gaps = [e for e in events if e.type == "gap"]
    assert len(gaps) == 1
    lost = range(gaps[0].from_seq, gaps[0].to_seq + 1)  # type: ignore[union-attr]
    for seq, kind in seen:
        assert stored.get(seq) == kind or (seq in lost and seq not in stored), seq
    recovered = next(e for e in events if e.type == "run_recovered")
    assert recovered.seq > max(seq for seq, _ in seen)
    assert accounted(events) == list(range(1, events[-1].seq + 1))
