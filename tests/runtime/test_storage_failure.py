"""A store that keeps failing, for real: SQLite on a small tmpfs that fills up.

Once the store has failed for longer than ``storage_retry_window``, runs whose events it cannot
take end ``error`` (code ``storage_unavailable``) as soon as it takes their terminal event; API
writes fail with ``StorageUnavailableError`` (503 over HTTP) and the health check names the
store; a stop does not wait for the store for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import culm
from culm.domain.models import Message
from culm.errors import StorageUnavailableError
from culm.storage.base import SessionState
from culm.storage.sql import SqlStore
from tests.conftest import CI
from tests.support import collect, settings


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs (mounting needs root; skipped where refused, failed under CI=true)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        message = f"cannot mount a tmpfs: {done.stderr.strip()}"
        if CI:
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte; returns the filler file."""
    filler = directory / "filler"
    for size in (65536, 1):
        with contextlib.suppress(OSError), filler.open("ab", buffering=0) as out:
            while True:
                out.write(b"\0" * size)
    return filler


# SQLite only: a disk filling up is the SQLite file's tmpfs (PostgreSQL's disk is the server's).
@pytest.mark.backends("sqlite")
async def test_runs_end_in_error_when_the_disk_stays_full(tmp_path: Path, tiny_fs: Path) -> None:
    config = settings(
        tmp_path / "home",
        database_url=f"sqlite+aiosqlite:///{tiny_fs / 'culm.db'}",
        storage_retry_window=1.0,
        scheduler=False,
    )
    async with culm.Engine(config) as engine:
        engine.scripts.register(
            "steady", {"turns": [[{"delay": 0.002}, {"text": "t" * 50}] * 100000]}
        )
        run = await engine.run("go", model="scripted:steady")
        async for event in engine.subscribe(run.run_id):
            if event.seq >= 5:
                break
        assert await engine.check_store() is None
        filler = fill(tiny_fs)
        runner = engine.registry.get(run.run_id)
        assert runner is not None
        async with asyncio.timeout(30):  # the window passes: the run is being ended
            while runner.storage_error is None:
                await asyncio.sleep(0.05)
        problem = await engine.check_store()
        assert problem is not None and "full" in problem
        with pytest.raises(StorageUnavailableError):
            await engine.create_session(model="scripted:echo")
        filler.unlink()  # space again: the terminal event and status are stored
        done = await engine.wait(run.run_id, timeout=30)
        assert done.status is culm.RunStatus.ERROR
        events = await collect(engine.subscribe(run.run_id))
        assert events[-1].type == "error"
        assert events[-1].code == "storage_unavailable"  # type: ignore[union-attr]
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        session = await engine.create_session(model="scripted:echo")
        again = await engine.start_run(session.session_id, "hi")
        assert (await engine.wait(again.run_id, timeout=10)).status is culm.RunStatus.COMPLETED
        assert await engine.check_store() is None


class _MessagesUnavailable(SqlStore):
    """The real SQLite store, whose transcript reads fail as a full or unreachable store's do
    (a run reads its transcript with its session as it starts)."""

    async def get_messages(self, session_id: str) -> list[Message]:
        raise StorageUnavailableError("the store could not read the transcript")

    async def get_session_state(self, session_id: str) -> SessionState | None:
        raise StorageUnavailableError("the store could not read the transcript")


async def test_a_store_failure_inside_a_run_ends_it_storage_unavailable(tmp_path: Path) -> None:
    config = settings(tmp_path, scheduler=False)
    store = _MessagesUnavailable(config.resolved_database_url)
    async with culm.Engine(config, store=store) as engine:
        run = await engine.run("hello", model="scripted:echo")
        ended = await engine.wait(run.run_id, timeout=10)
        events = await collect(engine.subscribe(run.run_id))

    assert ended.status is culm.RunStatus.ERROR
    assert events[-1].type == "error"
    assert events[-1].code == "storage_unavailable"
    assert "could not read the transcript" in (ended.error or "")
