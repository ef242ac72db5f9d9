"""Named agents from code, config.toml and the database, and the sessions made from them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import culm
from culm.agents.models import AgentDefinition, AgentSource
from culm.errors import InvalidFieldError, NotFoundError, ReadOnlyError
from tests.support import settings

# The database's part (the agents table, runs.agent, the metrics join) runs on both backends;
# tests of the engine's merging of settings, the same on either, run on SQLite only.
ENGINE_ONLY = pytest.mark.backends("sqlite")


@pytest.fixture(autouse=True)
def _on_each_backend(backend: str) -> str:
    return backend


def app() -> culm.App:
    made = culm.App("team.agents:app")
    made.agent(
        "coder",
        description="Writes code.",
        model="scripted:echo",
        system_prompt="You write code.",
        tools=["read", "bash"],
        max_rounds=7,
        tool_timeout=9.5,
    )
    made.agent("shared", model="scripted:echo", system_prompt="from code")
    return made


def engine(tmp_path: Path) -> culm.Engine:
    config = {
        "reviewer": {"model": "scripted:demo", "tools": ["read"], "metadata": {"team": "qa"}},
        "shared": {"model": "scripted:demo", "system_prompt": "from config"},
    }
    return culm.Engine(settings(tmp_path, agents=config), app=app())


async def test_agents_from_three_sources_say_where_they_come_from(tmp_path: Path) -> None:
    async with engine(tmp_path) as eng:
        await eng.agents.put("helper", AgentDefinition(model="scripted:echo", tools=["glob"]))
        agents = {agent.name: agent for agent in await eng.agents.list()}
    assert sorted(agents) == ["coder", "helper", "reviewer", "shared"]
    assert (agents["coder"].source, agents["coder"].origin) == (AgentSource.CODE, "team.agents:app")
    assert agents["reviewer"].source is AgentSource.CONFIG
    assert agents["reviewer"].origin.endswith("config.toml")
    assert (agents["helper"].source, agents["helper"].origin) == (AgentSource.API, "database")
    assert [a.read_only for a in agents.values()] == [True, False, True, True]
    assert agents["shared"].system_prompt == "from code"  # code wins over config
    assert agents["helper"].created_at is not None


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        (
            "coder",
            {
                "model": "scripted:echo",
                "system_prompt": "You write code.",
                "tools": ("read_file", "list_dir", "glob", "grep", "bash"),
                "max_rounds": 7,
                "tool_timeout": 9.5,
            },
        ),
        ("reviewer", {"model": "scripted:demo", "metadata": {"team": "qa"}, "max_rounds": None}),
        ("helper", {"model": "scripted:echo", "tools": ("glob",), "system_prompt": None}),
    ],
)
@ENGINE_ONLY
async def test_a_session_takes_its_agents_settings(
    tmp_path: Path, agent: str, expected: dict[str, object]
) -> None:
    async with engine(tmp_path) as eng:
        await eng.agents.put("helper", AgentDefinition(model="scripted:echo", tools=["glob"]))
        session = await eng.create_session(agent=agent)
        stored = await eng.get_session(session.session_id)
    assert stored.agent == agent
    assert {key: getattr(stored, key) for key in expected} == expected


@ENGINE_ONLY
async def test_fields_given_override_the_agents(tmp_path: Path) -> None:
    async with engine(tmp_path) as eng:
        session = await eng.create_session(
            agent="coder", model="scripted:demo", tools=["grep"], max_rounds=2
        )
        empty = await eng.create_session(agent="coder", tools=[])  # given, even though empty
    assert (session.model, session.tools, session.max_rounds) == ("scripted:demo", ("grep",), 2)
    assert session.system_prompt == "You write code." and session.tool_timeout == 9.5
    assert empty.tools == ()


@ENGINE_ONLY
async def test_runs_record_the_agent_and_follow_its_limits(tmp_path: Path) -> None:
    looping = culm.Script(
        turns=[[{"tool_call": {"name": "glob", "arguments": {"pattern": "*"}}}]], repeat_last=True
    )
    async with engine(tmp_path) as eng:
        eng.scripts.register("loop", looping)
        await eng.agents.put(
            "looper", AgentDefinition(model="scripted:loop", tools=["glob"], max_rounds=2)
        )
        run = await eng.run("go", agent="looper")
        ended = await eng.wait(run.run_id, timeout=20)
        listed = await eng.list_runs()
    assert run.agent == "looper" and listed[0].agent == "looper"
    assert ended.status is culm.RunStatus.ERROR and ended.round_count == 2


@ENGINE_ONLY
async def test_read_only_agents_and_unknown_ones(tmp_path: Path) -> None:
    async with engine(tmp_path) as eng:
        with pytest.raises(ReadOnlyError, match="agent 'coder' is defined in code"):
            await eng.agents.put("coder", AgentDefinition())
        with pytest.raises(ReadOnlyError, match="config"):
            await eng.agents.delete("reviewer")
        with pytest.raises(NotFoundError):
            await eng.agents.delete("nobody")
        with pytest.raises(InvalidFieldError, match="agent: unknown agent 'nobody'"):
            await eng.create_session(agent="nobody")
        with pytest.raises(InvalidFieldError, match="name"):
            await eng.agents.put("no spaces", AgentDefinition())


async def test_put_replaces_and_delete_removes(tmp_path: Path) -> None:
    async with engine(tmp_path) as eng:
        first, created = await eng.agents.put("temp", AgentDefinition(model="scripted:echo"))
        second, again = await eng.agents.put("temp", AgentDefinition(description="now"))
        await eng.agents.delete("temp")
        with pytest.raises(NotFoundError):
            await eng.agents.get("temp")
    assert (created, again) == (True, False)
    assert second.model is None and second.description == "now"
    assert second.created_at == first.created_at


@ENGINE_ONLY
async def test_schedules_fire_as_the_agent(tmp_path: Path) -> None:
    async with engine(tmp_path) as eng:
        schedule = await eng.schedules.create(
            name="review",
            trigger={"type": "interval", "every_seconds": 3600},
            run_config={"message": "review it", "agent": "reviewer"},
        )
        fire = await eng.schedules.trigger(schedule.schedule_id)
        assert fire.run_id is not None
        run = await eng.get_run(fire.run_id)
        session = await eng.get_session(run.session_id)
    assert run.agent == "reviewer" and session.model == "scripted:demo"
    assert session.tools == ("read_file", "list_dir", "glob", "grep")  # none given: the agent's


async def test_metrics_by_agent(tmp_path: Path) -> None:
    async with engine(tmp_path) as eng:
        for agent in ("coder", "coder", "reviewer"):
            run = await eng.run("hello", agent=agent)
            await eng.wait(run.run_id, timeout=20)
        await eng.run("no agent", model="scripted:echo")
        async with asyncio.timeout(20):
            while True:
                report = await eng.metrics.queries.agents()
                if sum(row.runs for row in report.agents) == 3 and all(
                    row.rounds for row in report.agents
                ):
                    break
                await asyncio.sleep(0.05)
    rows = {row.agent: row for row in report.agents}
    assert sorted(rows) == ["coder", "reviewer"]
    assert (rows["coder"].runs, rows["reviewer"].runs) == (2, 1)
    assert rows["coder"].rounds == 2 and rows["coder"].tokens.total_tokens > 0


@ENGINE_ONLY
async def test_a_schedule_with_an_unknown_agent_is_refused(tmp_path: Path) -> None:
    async with engine(tmp_path) as eng:
        with pytest.raises(InvalidFieldError, match="run_config.agent: unknown agent 'nobody'"):
            await eng.schedules.create(
                name="bad",
                trigger={"type": "interval", "every_seconds": 60},
                run_config={"message": "hi", "agent": "nobody"},
            )
