"""Rows of ``sessions`` and ``runs`` to domain models and back, on every backend: every field
a caller may set reads back as it was written."""

from __future__ import annotations

import sqlalchemy as sa

from culm.domain.models import Session, SessionKind, ToolPhase, Usage
from culm.domain.time import new_id
from culm.storage.rows import run_from_row
from culm.storage.sql import SqlStore
from tests.storage.queue_support import T0, a_run, new_session, owned_run, raw_rows


async def test_a_session_with_every_field_set_reads_back_the_same(store: SqlStore) -> None:
    parent = await new_session(store)
    session = Session(
        session_id=new_id(),
        kind=SessionKind.CHILD,
        parent_session_id=parent.session_id,
        model="scripted:demo",
        system_prompt="be brief",
        tools=("read", "write"),
        workspace="/w",
        metadata={"team": "a", "n": 1},
        created_at=T0,
        require_approval=("write", "shell*"),
        input_timeout=90.5,
        input_timeout_action="error",
        agent="reviewer",
        max_rounds=7,
        tool_timeout=12.5,
        max_cost_usd=0.25,
        max_tokens=5000,
    )
    await store.create_session(session)

    assert await store.get_session(session.session_id) == session


async def test_a_run_with_every_field_set_reads_back_the_same(store: SqlStore) -> None:
    parent = await owned_run(store, "w1")
    session = await new_session(store)
    run = a_run(
        session.session_id,
        parent_run_id=parent.run_id,
        created_at=T0,
        agent="reviewer",
        input="hello",
        attempt=3,
        max_cost_usd=0.5,
        max_tokens=900,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        # Columns a reservation does not usually fill: they are written as given all the same.
        usage=Usage(prompt_tokens=5, completion_tokens=2, total_tokens=7),
        last_tool_name="read",
        last_tool_phase=ToolPhase.BEGIN,
    )
    await store.reserve_run(run, queue=False, owner="w1", lease_seconds=60)

    stored = await store.get_run(run.run_id)

    assert stored == run.model_copy(update={"owner": "w1", "epoch": 1})


async def test_a_runs_usage_read_as_json_text_is_decoded(sqlite_store: SqlStore) -> None:
    # A row read without the columns' types (plain SQL) holds the usage as JSON text on SQLite
    # (asyncpg decodes JSONB itself).
    store = sqlite_store
    session = await new_session(store)
    run = a_run(session.session_id, usage=Usage(prompt_tokens=3, completion_tokens=4))
    await store.reserve_run(run, queue=False)
    [row] = await raw_rows(store, sa.select(sa.text("*")).select_from(sa.table("runs")))
    assert isinstance(row.usage, str)

    assert run_from_row(row).usage == Usage(prompt_tokens=3, completion_tokens=4)
