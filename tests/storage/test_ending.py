"""Fewer writes per run, on each backend. A run's end written with its terminal event
(``append_events``'s ``endings``): the final message, the status and the freed slot in the
transaction of the events; a run left out by its fence gets none of it; a failing ending fails
the whole write. A headless run's new session written with its reservation."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from culm.domain.events import Complete, Token
from culm.domain.models import AssistantMessage, RunStatus, Session, Usage
from culm.domain.time import new_id
from culm.storage.base import Ending
from culm.storage.sql import SqlStore
from tests.storage.queue_support import a_run, owned_run, stamp

USAGE = Usage(prompt_tokens=3, completion_tokens=5)


def _ending(session_id: str, text: str = "done") -> Ending:
    return Ending(session_id, RunStatus.COMPLETED, None, USAGE, (AssistantMessage(content=text),))


async def test_an_ending_is_written_with_the_terminal_event(store: SqlStore) -> None:
    run = await owned_run(store, "w1")
    queued = a_run(run.session_id)
    await store.reserve_run(queued, queue=True)
    events = stamp(run, [Token(content="x"), Complete(usage=USAGE, final_message="done")])
    left_out = await store.append_events(
        events, fences={run.run_id: ("w1", 1)}, endings={run.run_id: _ending(run.session_id)}
    )
    assert left_out == set()
    ended = await store.get_run(run.run_id)
    assert ended is not None
    assert (ended.status, ended.usage, ended.owner) == (RunStatus.COMPLETED, USAGE, None)
    assert ended.completed_at is not None
    assert [e.type for e in await store.read_events(run.run_id)] == ["token", "complete"]
    messages = await store.get_messages(run.session_id)
    assert [(m.role, m.content) for m in messages][-1] == ("assistant", "done")
    # The slot is freed in the same transaction: the queued run is ready.
    promoted = await store.get_run(queued.run_id)
    assert promoted is not None and not promoted.queued


async def test_a_run_left_out_by_its_fence_gets_neither_its_events_nor_its_ending(
    store: SqlStore,
) -> None:
    kept, lost = await owned_run(store, "w1"), await owned_run(store, "w1")
    events = [
        *stamp(kept, [Complete(usage=USAGE, final_message="kept")]),
        *stamp(lost, [Complete(usage=USAGE, final_message="lost")]),
    ]
    left_out = await store.append_events(
        events,
        fences={kept.run_id: ("w1", 1), lost.run_id: ("w1", 2)},  # lost: not its epoch
        endings={
            kept.run_id: _ending(kept.session_id, "kept"),
            lost.run_id: _ending(lost.session_id, "lost"),
        },
    )
    assert left_out == {lost.run_id}
    assert await _status(store, kept.run_id) is RunStatus.COMPLETED
    assert [e.type for e in await store.read_events(kept.run_id)] == ["complete"]
    stored = await store.get_run(kept.run_id)
    assert stored is not None and stored.last_seq == 1  # its liveness written too
    assert await _status(store, lost.run_id) is RunStatus.RUNNING
    assert await store.read_events(lost.run_id) == []
    assert "lost" not in [m.content for m in await store.get_messages(lost.session_id)]


async def test_a_failing_ending_fails_the_whole_write(store: SqlStore) -> None:
    first, second = await owned_run(store, "w1"), await owned_run(store, "w1")
    events = [
        *stamp(first, [Token(content="x")]),
        *stamp(second, [Complete(usage=USAGE, final_message="done")]),
    ]
    with pytest.raises(sa.exc.IntegrityError):
        # Its final message names a session that does not exist: the database refuses it.
        await store.append_events(
            events,
            fences={first.run_id: ("w1", 1), second.run_id: ("w1", 1)},
            endings={second.run_id: _ending(new_id())},
        )
    assert await store.read_events(first.run_id) == []
    assert await store.read_events(second.run_id) == []
    assert await _status(store, second.run_id) is RunStatus.RUNNING


async def test_an_ending_in_error_keeps_its_error_and_its_messages_name_the_run(
    store: SqlStore,
) -> None:
    run = await owned_run(store, "w1")
    failed = Ending(
        run.session_id, RunStatus.ERROR, "boom", USAGE, (AssistantMessage(content="partial"),)
    )
    assert not await store.has_run_messages(run.run_id)
    events = stamp(run, [Token(content="x")])
    await store.append_events(events, fences={run.run_id: ("w1", 1)}, endings={run.run_id: failed})
    ended = await store.get_run(run.run_id)
    assert ended is not None
    assert (ended.status, ended.error) == (RunStatus.ERROR, "boom")
    assert await store.has_run_messages(run.run_id)


async def _status(store: SqlStore, run_id: str) -> RunStatus:
    run = await store.get_run(run_id)
    assert run is not None
    return run.status


async def test_a_new_session_is_stored_with_its_run_or_not_at_all(store: SqlStore) -> None:
    # engine.run's one write: the session and its run. A run whose reservation fails in the
    # transaction (here: owned, without a lease) leaves no session behind.
    session = Session(session_id=new_id(), model="scripted:demo", workspace="/w")
    run = a_run(session.session_id)
    reserved = await store.reserve_run(run, queue=False, session=session)
    assert reserved.run.run_id == run.run_id
    assert await store.get_session(session.session_id) == session
    other = Session(session_id=new_id(), model="scripted:demo", workspace="/w")
    with pytest.raises(ValueError, match="lease_seconds"):
        await store.reserve_run(a_run(other.session_id), queue=False, owner="w1", session=other)
    assert await store.get_session(other.session_id) is None


async def test_a_session_that_is_not_the_runs_is_refused(store: SqlStore) -> None:
    session = Session(session_id=new_id(), model="scripted:demo", workspace="/w")
    run = a_run(new_id())
    with pytest.raises(ValueError, match=r"^reserve_run: the session is not the run's$"):
        await store.reserve_run(run, queue=False, session=session)
    assert await store.get_session(session.session_id) is None
    assert await store.get_run(run.run_id) is None
