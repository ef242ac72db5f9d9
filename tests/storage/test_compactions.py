"""The store's compactions, on every backend: stored in order, read back whole, fenced like
messages, deleted with their session; one made outside a run only while no run holds the
session's slot."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from culm.domain.compaction import Compaction
from culm.domain.models import Usage, UserMessage
from culm.errors import LeaseLostError, SessionBusyError, SessionChangedError
from culm.storage.base import SessionState, Store
from culm.storage.rows import run_to_row
from culm.storage.schema import runs
from culm.storage.sql import SqlStore
from tests.storage.test_store import a_run, finish, new_session, running_run


def a_compaction(session_id: str, run_id: str | None = None, **fields: object) -> Compaction:
    values: dict[str, object] = {
        "session_id": session_id,
        "run_id": run_id,
        "trigger": "auto",
        "strategy": "elide+summarize",
        "summary": "the user asked for … ✓",
        "summary_end": 6,
        "kept": (0, 4),
        "elided": {7: (600, 300), 9: (10, 0)},
        "message_count": 12,
        "messages_compacted": 8,
        "tokens_before": 3100,
        "tokens_after": 900,
        "summary_model": "openai:fake",
        "summary_usage": Usage(prompt_tokens=800, completion_tokens=60, total_tokens=860),
    }
    return Compaction.model_validate(values | fields)


async def test_compactions_are_numbered_per_session_and_read_back_whole(store: SqlStore) -> None:
    session, other = await new_session(store), await new_session(store)
    assert await store.get_compaction(session.session_id) is None

    first = await store.add_compaction(a_compaction(session.session_id))
    second = await store.add_compaction(a_compaction(session.session_id, summary_end=9))
    elsewhere = await store.add_compaction(a_compaction(other.session_id))

    assert (first.seq, second.seq, elsewhere.seq) == (1, 2, 1)
    assert await store.get_compaction(session.session_id) == second
    assert await store.list_compactions(session.session_id) == [first, second]
    assert second.elided == {7: (600, 300), 9: (10, 0)} and second.kept == (0, 4)


async def test_a_fenced_compaction_needs_the_runs_fence(store: SqlStore) -> None:
    run = await running_run(store)
    compaction = a_compaction(run.session_id, run.run_id)

    stored = await store.add_compaction(compaction, fence=("w1", 1))
    with pytest.raises(LeaseLostError):
        await store.add_compaction(compaction, fence=("w1", 2))  # taken over since

    assert await store.list_compactions(run.session_id) == [stored]


async def test_compactions_go_with_their_session(store: SqlStore) -> None:
    session = await new_session(store)
    await store.add_compaction(a_compaction(session.session_id))

    assert await store.delete_session(session.session_id)

    assert await store.list_compactions(session.session_id) == []


async def test_an_idle_compaction_is_refused_while_a_run_holds_the_slot(store: SqlStore) -> None:
    run = await running_run(store)

    with pytest.raises(SessionBusyError) as busy:
        await store.add_compaction(a_compaction(run.session_id), idle=True)

    assert busy.value.run_id == run.run_id
    assert await store.list_compactions(run.session_id) == []


async def test_an_idle_compaction_is_stored_only_on_the_transcript_it_was_made_from(
    store: SqlStore,
) -> None:
    """A run that came and went while it was made (messages added since): refused, naming it."""
    run = await running_run(store)
    said = [UserMessage(content=f"turn {n}") for n in range(3)]
    await store.append_messages(run.session_id, said, run_id=run.run_id)
    await finish(store, run.run_id)

    stored = await store.add_compaction(a_compaction(run.session_id, message_count=3), idle=True)
    with pytest.raises(SessionChangedError) as changed:
        await store.add_compaction(a_compaction(run.session_id, message_count=2), idle=True)

    assert changed.value.run_id == run.run_id and "changed" in str(changed.value)
    assert await store.list_compactions(run.session_id) == [stored]


async def test_an_idle_compaction_waits_for_a_run_being_created_and_sees_it(
    postgres_head_url: str,
) -> None:
    """PostgreSQL, read committed: a run inserted but not yet committed is invisible to the
    compaction's check, unless the check waits for it. It does (the session row's lock): the
    compaction written meanwhile is refused once the run commits, not stored beside it."""
    store = SqlStore(postgres_head_url)
    await store.start()
    other = create_async_engine(postgres_head_url)
    try:
        session = await new_session(store)
        run = a_run(session.session_id)
        async with other.begin() as conn:
            await conn.execute(runs.insert().values(run_to_row(run)))
            compacting = asyncio.create_task(
                store.add_compaction(a_compaction(session.session_id), idle=True)
            )
            await asyncio.sleep(0.5)  # time for a compaction that did not wait to be stored
        with pytest.raises(SessionBusyError):
            await compacting
        assert await store.list_compactions(session.session_id) == []
    finally:
        await other.dispose()
        await store.aclose()


async def test_a_runs_start_up_state_is_the_session_its_messages_and_latest_compaction(
    store: SqlStore,
) -> None:
    session, bare = await new_session(store), await new_session(store)
    said = [UserMessage(content="one"), UserMessage(content="two ✓")]
    await store.append_messages(session.session_id, said, run_id=None)
    await store.add_compaction(a_compaction(session.session_id))
    latest = await store.add_compaction(a_compaction(session.session_id, summary_end=9))

    state = await store.get_session_state(session.session_id)  # one read transaction
    assert state == SessionState(session, said, latest)
    # The same as the three reads apart (the base class's way, for any other store).
    assert await Store.get_session_state(store, session.session_id) == state
    assert await store.get_session_state(bare.session_id) == SessionState(bare, [], None)
    assert await store.get_session_state("no-such-session") is None
