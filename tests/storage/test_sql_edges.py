"""``SqlStore``'s own checks and retries, on every backend (found by mutation testing, issue #22):
a fence refused before anything is written, a reservation that keeps clashing given up after
five tries, and the reads' bounds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from culm.domain.models import RunStatus, Session, Usage, UserMessage
from culm.domain.time import new_id
from culm.errors import AlreadyRunningError, LeaseLostError
from culm.storage.sql import SqlStore
from tests.storage.queue_support import a_run, new_session, owned_run, tokens
from tests.storage.test_compactions import a_compaction


def count_writes(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the store's write transactions (one entry per attempt): the real write runs."""
    calls: list[int] = []
    real = store.write

    async def counted(fn: Callable[[sa.Connection], Any]) -> Any:
        calls.append(1)
        return await real(fn)

    monkeypatch.setattr(store, "write", counted)
    return calls


# Health


async def test_a_store_that_does_not_answer_a_read_within_two_seconds_is_unhealthy(
    sqlite_store: SqlStore,
) -> None:
    """Every connection of SQLite's reader pool (4 and 4 more) held: the check's read waits for
    one, and gives up after its 2 s (the pool itself would wait an hour)."""
    async with contextlib.AsyncExitStack() as held:
        for _ in range(8):
            await held.enter_async_context(sqlite_store.read_connection())
        assert await sqlite_store.check() == "the store did not answer within 2 s"

    assert await sqlite_store.check() is None


async def test_a_listener_that_cannot_connect_is_the_stores_wakeups_problem() -> None:
    """No server on port 1: the listener keeps trying, and the store says why it does not
    listen (nothing else of the store is used, so it is not even started)."""
    store = SqlStore("postgresql+asyncpg://nobody@127.0.0.1:1/culm")
    assert store.wakeups_problem() is None  # no listener yet
    wakeups = store.wakeups()
    try:
        while store.wakeups_problem() == "connecting":
            await asyncio.sleep(0.01)
        problem = store.wakeups_problem()
        assert problem is not None and problem.startswith("not listening, polling instead")
    finally:
        await wakeups.aclose()
    assert store.wakeups_problem() is None


# Reservations


async def test_a_parent_fence_without_a_parent_run_is_refused_before_any_write(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = await new_session(store)
    run = a_run(session.session_id)
    writes = count_writes(store, monkeypatch)

    with pytest.raises(
        ValueError, match="^reserve_run: a parent_fence needs the run's parent_run_id$"
    ):
        await store.reserve_run(run, queue=False, parent_fence=("w1", 1))

    assert writes == []
    assert await store.get_run(run.run_id) is None


async def test_a_reservation_that_keeps_clashing_gives_up_after_five_tries(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same run id queued twice: every insert is a unique violation, as a slot taken by
    another process between the look and the insert would be, so the store looks again."""
    session = await new_session(store)
    await store.reserve_run(a_run(session.session_id), queue=False)
    run = a_run(session.session_id)
    await store.reserve_run(run, queue=True)
    writes = count_writes(store, monkeypatch)

    with pytest.raises(AlreadyRunningError) as refused:
        await store.reserve_run(run, queue=True)

    assert (refused.value.session_id, refused.value.run_id) == (session.session_id, "unknown")
    assert len(writes) == 5


async def test_an_integrity_error_that_is_no_clash_is_raised_at_once(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = count_writes(store, monkeypatch)

    with pytest.raises(sa.exc.IntegrityError) as refused:  # no such session: a foreign key
        await store.reserve_run(a_run(new_id()), queue=False)

    assert not store.dialect.is_unique_violation(refused.value)
    assert len(writes) == 1


# Fenced messages and compactions


async def test_a_fence_needs_its_run_id_and_nothing_is_written_without_it(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = await owned_run(store, "w1")
    writes = count_writes(store, monkeypatch)

    with pytest.raises(ValueError, match="^append_messages: a fence needs the run_id it fences$"):
        await store.append_messages(
            run.session_id, [UserMessage(content="x")], run_id=None, fence=("w1", 1)
        )
    with pytest.raises(ValueError, match="^add_compaction: a fence needs the run_id it fences$"):
        await store.add_compaction(a_compaction(run.session_id), fence=("w1", 1))
    # Nothing to append is no write at all, whatever the fence.
    await store.append_messages(run.session_id, [], run_id=None, fence=("w1", 1))

    assert writes == []
    assert await store.list_compactions(run.session_id) == []


async def test_a_runs_compaction_without_a_fence_is_not_checked(store: SqlStore) -> None:
    """As a run's messages without one: the caller holds the run some other way."""
    run = await owned_run(store, "w1")

    stored = await store.add_compaction(a_compaction(run.session_id, run.run_id))

    assert await store.list_compactions(run.session_id) == [stored]


async def test_messages_under_a_lost_fence_are_refused_whole(store: SqlStore) -> None:
    run = await owned_run(store, "w1")
    first = await store.get_messages(run.session_id)
    messages = [UserMessage(content="a"), UserMessage(content="b")]

    for fence in (("w1", 2), ("w2", 1)):
        with pytest.raises(LeaseLostError):
            await store.append_messages(run.session_id, messages, run_id=run.run_id, fence=fence)
    assert await store.get_messages(run.session_id) == first

    await store.append_messages(run.session_id, messages, run_id=run.run_id, fence=("w1", 1))
    assert await store.get_messages(run.session_id) == [*first, *messages]
    assert await store.has_run_messages(run.run_id) is True


async def test_a_fenced_compaction_of_an_ended_run_is_refused(store: SqlStore) -> None:
    run = await owned_run(store, "w1")
    await store.finish_run(
        run.run_id, fence=("w1", 1), status=RunStatus.COMPLETED, error=None, usage=Usage()
    )

    with pytest.raises(LeaseLostError):
        await store.add_compaction(a_compaction(run.session_id, run.run_id), fence=("w1", 1))

    assert await store.list_compactions(run.session_id) == []


# Events


async def test_the_last_event_seq_is_the_stored_one_not_the_reservation(store: SqlStore) -> None:
    run = await owned_run(store, "w1")
    await store.append_events(tokens(run, 3), fences={run.run_id: ("w1", 1)}, reserve=20)

    assert await store.last_event_seq(run.run_id) == 3


# Reads


async def test_a_sessions_tools_needing_approval_are_stored(store: SqlStore) -> None:
    session = Session(
        session_id=new_id(), model="m", workspace="/w", require_approval=("bash", "write_file")
    )
    await store.create_session(session)

    stored = await store.get_session(session.session_id)
    assert stored is not None and stored.require_approval == ("bash", "write_file")


async def test_sessions_are_listed_a_hundred_at_most_by_default(store: SqlStore) -> None:
    for _ in range(101):
        await new_session(store)

    assert len(await store.list_sessions()) == 100


# The queue


async def test_runs_queue_in_order_unless_told_to_jump(store: SqlStore) -> None:
    session = await new_session(store)
    active = a_run(session.session_id)
    await store.reserve_run(active, queue=False, owner="w1", lease_seconds=60)
    second, third = a_run(session.session_id), a_run(session.session_id)
    for run in (second, third):
        await store.reserve_run(run, queue=True)

    # The active run is cancelled as it starts: the run queued first takes its slot.
    await store.request_cancel(active.run_id, "user")
    assert await store.start_run(active.run_id, 1, owner="w1") is None

    ready = await store.get_active_run(session.session_id)
    assert ready is not None and ready.run_id == second.run_id and ready.queued is False
