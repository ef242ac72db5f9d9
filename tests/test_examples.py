"""The example project (examples/helpdesk) runs end to end with its scripted model: its app's
two tools, two agents and schedule, through the engine and its README's commands."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import culm
from tests.support import collect, settings

EXAMPLE = Path(__file__).parent.parent / "examples" / "helpdesk"


@pytest.fixture
def helpdesk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    import sys

    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.delenv("HELPDESK_MODEL", raising=False)
    home = tmp_path / "home"
    (home / "scripts").mkdir(parents=True)
    shutil.copy(EXAMPLE / "scripts" / "helpdesk.json", home / "scripts")
    yield home
    for name in [m for m in sys.modules if m == "helpdesk" or m.startswith("helpdesk.")]:
        del sys.modules[name]


async def test_the_example_runs_end_to_end(helpdesk: Path) -> None:
    async with culm.Engine(settings(helpdesk), app="helpdesk.app:app") as engine:
        agents = {agent.name: agent for agent in await engine.agents.list()}
        [schedule] = await engine.schedules.list()
        run = await engine.run("Where is my order A-1001?", agent="support")
        events = await collect(engine.subscribe(run.run_id))
        session = await engine.get_session(run.session_id)
    assert sorted(agents) == ["support", "triage"]
    assert agents["support"].origin == "helpdesk.app:app"
    assert (schedule.name, schedule.run_config.agent) == ("morning triage", "triage")
    results = [e.result for e in events if e.type == "tool_complete"]  # type: ignore[union-attr]
    assert '"status":"shipped"' in results[0] and results[1] == "ticket opened for A-1001 (late)"
    assert [e.content for e in events if e.type == "tool_token"] == [  # type: ignore[union-attr]
        "A-1001\tlate\tURGENT\tCustomer asks where the kettle is.\n"
    ]
    assert events[-1].type == "complete"
    assert (Path(session.workspace) / "tickets.txt").read_text().startswith("A-1001\tlate")


def test_the_readme_names_what_the_app_defines() -> None:
    readme = (EXAMPLE / "README.md").read_text()
    for name in ("lookup_order", "open_ticket", "support", "triage", "morning triage"):
        assert f"`{name}`" in readme
    assert "culm run --app helpdesk.app:app --agent support" in readme
