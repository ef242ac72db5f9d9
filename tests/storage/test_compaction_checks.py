"""An idle compaction's checks, named (found by mutation testing, issue #22): the errors carry
the session, and a session with no messages yet is checked against a count of zero."""

from __future__ import annotations

import pytest

from culm.errors import SessionBusyError, SessionChangedError
from culm.storage.sql import SqlStore
from tests.storage.test_compactions import a_compaction
from tests.storage.test_store import new_session, running_run


async def test_a_busy_or_changed_session_is_named(store: SqlStore) -> None:
    run = await running_run(store)
    with pytest.raises(SessionBusyError) as busy:
        await store.add_compaction(a_compaction(run.session_id), idle=True)
    assert (busy.value.session_id, busy.value.run_id) == (run.session_id, run.run_id)

    empty = await new_session(store)
    with pytest.raises(SessionChangedError) as changed:
        await store.add_compaction(a_compaction(empty.session_id, message_count=1), idle=True)
    assert (changed.value.session_id, changed.value.run_id) == (empty.session_id, "")
    assert str(changed.value) == (
        f"session {empty.session_id!r} changed while it was compacted (run '')"
    )


async def test_a_session_without_messages_takes_a_compaction_made_from_none(
    store: SqlStore,
) -> None:
    empty = await new_session(store)
    made = a_compaction(empty.session_id, message_count=0)

    stored = await store.add_compaction(made, idle=True)

    assert await store.list_compactions(empty.session_id) == [stored]
