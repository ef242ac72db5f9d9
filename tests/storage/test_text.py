"""Text the databases cannot hold as it is (NUL on PostgreSQL, lone surrogates anywhere) never
makes a write fail: the store replaces each such character with U+FFFD, the same way on both
backends (see culm.domain.text and culm.storage.dialect)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

import culm
from culm.domain.text import find_problem, storable
from culm.storage.rowwriter import RowWriter
from culm.storage.sql import SqlStore

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'culm.db'}"
    url: str = request.getfixturevalue("postgres_head_url")
    return url


async def test_a_session_with_nul_and_a_lone_surrogate_is_stored_with_replacements(
    database_url: str, tmp_path: Path
) -> None:
    async with culm.Engine(culm.Settings(home=tmp_path, database_url=database_url)) as engine:
        session = await engine.create_session(
            model="scripted:echo",
            system_prompt="a\x00b\ud800c",
            metadata={"k\x00": ["x\x00y", {"z": "\udfff"}], "ok": "\U0001f600"},
        )
        stored = await engine.get_session(session.session_id)
    assert stored.system_prompt == "a\ufffdb\ufffdc"
    assert stored.metadata == {"k\ufffd": ["x\ufffdy", {"z": "\ufffd"}], "ok": "\U0001f600"}


async def test_a_run_whose_model_calls_a_tool_named_with_nul_ends_cleanly(
    database_url: str, tmp_path: Path
) -> None:
    """The model's tool name reaches raw text columns (``last_tool_name``, the metrics' tool
    name): a NUL in it failed every write of the run on PostgreSQL."""
    async with culm.Engine(culm.Settings(home=tmp_path, database_url=database_url)) as engine:
        engine.scripts.register(
            "nul",
            {
                "turns": [
                    [{"tool_call": {"name": "bad\x00tool", "arguments": {}}}],
                    [{"text": "ok"}],
                ]
            },
        )
        session = await engine.create_session(model="scripted:nul")
        run = await engine.start_run(session.session_id, "go\x00 on")
        done = await engine.wait(run.run_id, timeout=30)
        events = [event async for event in engine.subscribe(run.run_id)]
    assert done.status is culm.RunStatus.COMPLETED, done.error
    assert done.last_tool_name == "bad\ufffdtool"
    assert done.input == "go\ufffd on"
    errors = [event for event in events if event.type == "tool_error"]
    assert errors and "bad\x00tool" in errors[0].tool_name  # event bodies are JSON: kept as is


async def test_a_run_whose_model_streams_a_lone_surrogate_completes(
    database_url: str, tmp_path: Path
) -> None:
    """A lone surrogate (a provider's stream can split a pair) has no UTF-8 form: storing the
    token event retried for ever, then the message failed the run."""
    async with culm.Engine(culm.Settings(home=tmp_path, database_url=database_url)) as engine:
        engine.scripts.register("split", {"turns": [[{"text": "a\ud83d"}, {"text": "b"}]]})
        session = await engine.create_session(model="scripted:split")
        run = await engine.start_run(session.session_id, "hi")
        done = await engine.wait(run.run_id, timeout=30)
        events = [event async for event in engine.subscribe(run.run_id)]
        messages = await engine.get_messages(session.session_id)
    assert done.status is culm.RunStatus.COMPLETED, done.error
    tokens = [event.content for event in events if event.type == "token"]
    assert tokens == ["a\ufffd", "b"]
    assert messages[-1].content == "a\ufffdb"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("a\x00", "a\ufffd"),
        ("é\x00", "é\ufffd"),
        ("\ud800", "\ufffd"),
        ("x\udc00y", "x\ufffdy"),
        ("\ud83d\ude00", "\U0001f600"),  # a pair of surrogates is one character
        ("\U0001f600", "\U0001f600"),
    ],
)
def test_storable(text: str, expected: str) -> None:
    assert storable(text) == expected


def test_find_problem_names_the_path_and_counts_levels() -> None:
    def nested(levels: int) -> object:
        value: object = {}
        for _ in range(levels - 1):
            value = {"a": value}
        return value

    assert find_problem({"metadata": nested(32)}) is None
    assert find_problem({"metadata": nested(33)}) == (
        "metadata",
        "is nested deeper than 32 levels",
    )
    assert find_problem({"run_config": {"tools": ["ok", "b\x00"]}})[0] == "run_config.tools.1"  # type: ignore[index]
    assert find_problem({"metadata": {"a": "\ud800"}})[0] == "metadata.a"  # type: ignore[index]


async def test_rows_written_many_at_a_time_take_a_lone_surrogate(tmp_path: Path) -> None:
    """The SQLite RowWriter hands values to the driver itself (run events, metrics): a tool
    name with a lone surrogate made the metrics worker drop whole batches."""
    metadata = sa.MetaData()
    items = sa.Table(
        "text_items", metadata, sa.Column("k", sa.Integer), sa.Column("label", sa.Text)
    )
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'culm.db'}")
    await store.start()
    values = [(1, "plain"), (2, "bad\ud800name"), (3, "nul\x00kept")]

    def transaction(conn: sa.Connection) -> list[tuple[int, str]]:
        metadata.create_all(conn)
        RowWriter("sqlite").prepare_values(items.insert(), ("k", "label"), values).execute(conn)
        return [tuple(row) for row in conn.execute(sa.select(items).order_by(items.c.k))]

    try:
        stored = await store.write(transaction)
    finally:
        await store.aclose()
    # A NUL is storable in SQLite: this path (a hot one) keeps it rather than look for it.
    assert stored == [(1, "plain"), (2, "bad\ufffdname"), (3, "nul\x00kept")]
