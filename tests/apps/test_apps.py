"""Apps: loading ``module:attr``, entry points of an installed package, start-up errors, and
``culm.Engine(app=…)``."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import culm
from culm.apps import load_app
from culm.errors import AppLoadError
from tests.support import collect, settings, tool_turn

GOOD = '''
import culm

app = culm.App()


@app.tool(read_only=True)
def word_count(text: str) -> int:
    """How many words the text has.

    Args:
        text: the text to count.
    """
    return len(text.split())


app.agent("counter", model="scripted:counter", tools=["word_count"], description="Counts.")
'''


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for the test's modules (they are forgotten afterwards)."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    before = set(sys.modules)
    yield root
    for name in set(sys.modules) - before:
        if name.startswith("culmtest_"):
            del sys.modules[name]
    importlib.invalidate_caches()


def module(site: Path, name: str, source: str) -> None:
    (site / f"{name}.py").write_text(textwrap.dedent(source))
    importlib.invalidate_caches()


def test_load_module_attr(site: Path) -> None:
    module(site, "culmtest_good", GOOD)
    app = load_app("culmtest_good:app")
    assert app.name == "culmtest_good:app"
    assert list(app.tools) == ["word_count"] and list(app.agents) == ["counter"]
    assert load_app("culmtest_good") is app  # attr defaults to `app`


BAD_TOOL = """
import culm

app = culm.App()


@app.tool
def broken(count) -> str:
    return ""
"""


@pytest.mark.parametrize(
    ("name", "source", "spec", "message"),
    [
        (
            "culmtest_raises",
            "raise RuntimeError('no database configured')",
            "culmtest_raises:app",
            "app culmtest_raises:app: module 'culmtest_raises' failed to import: "
            "no database configured",
        ),
        (
            "culmtest_badtool",
            BAD_TOOL,
            "culmtest_badtool:app",
            "app culmtest_badtool:app: module 'culmtest_badtool': tool 'broken', parameter "
            "'count': has no type hint",
        ),
        (
            "culmtest_noattr",
            "x = 1",
            "culmtest_noattr:app",
            "module 'culmtest_noattr' has no attribute 'app'",
        ),
        ("culmtest_notapp", "app = 1", "culmtest_notapp:app", "'app' is a int, not a culm.App"),
        ("culmtest_x", "", "culmtest_missing:app", "module 'culmtest_missing' failed to import"),
    ],
)
def test_start_up_errors_name_the_module_and_the_problem(
    site: Path, name: str, source: str, spec: str, message: str
) -> None:
    module(site, name, source)
    with pytest.raises(AppLoadError) as failed:
        load_app(spec)
    assert message in str(failed.value)


def test_a_bad_app_stops_the_engine_from_being_made(site: Path, tmp_path: Path) -> None:
    module(site, "culmtest_badtool", BAD_TOOL)
    with pytest.raises(AppLoadError, match="tool 'broken'"):
        culm.Engine(settings(tmp_path, app=["culmtest_badtool:app"]))


def test_two_apps_defining_one_tool_are_refused(site: Path, tmp_path: Path) -> None:
    module(site, "culmtest_good", GOOD)
    other = culm.App("other")

    @other.tool(name="word_count")
    def count(text: str) -> str:
        return text

    with pytest.raises(AppLoadError, match="tool 'word_count' is defined by two apps"):
        culm.Engine(settings(tmp_path, app=["culmtest_good:app"]), app=other)


def test_app_definitions_are_checked() -> None:
    app = culm.App("mine")
    with pytest.raises(AppLoadError, match="agent 'bad name'"):
        app.agent("bad name")
    with pytest.raises(AppLoadError, match="agent 'x'.*max_rounds"):
        app.agent("x", max_rounds=0)
    with pytest.raises(AppLoadError, match="schedule 's'"):
        app.schedule("s", cron="not a cron", message="hi")


def install_package(site: Path, name: str, entry_point: str) -> None:
    """A package as pip would leave it in site-packages: the module and a dist-info whose
    entry_points.txt names the app in the group culm.apps."""
    package = site / name
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(GOOD))
    dist = site / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[culm.apps]\n{entry_point} = {name}:app\n")
    importlib.invalidate_caches()


async def test_an_installed_package_is_loaded_by_its_entry_point(
    site: Path, tmp_path: Path
) -> None:
    install_package(site, "culmtest_pkg", "counting")
    async with culm.Engine(settings(tmp_path)) as engine:
        engine.scripts.register(
            "counter",
            culm.Script(turns=[tool_turn("word_count", {"text": "a b c"}), [{"text": "3"}]]),
        )
        [agent] = await engine.agents.list()
        run = await engine.run("count", agent="counter")
        events = await collect(engine.subscribe(run.run_id))
    assert (agent.name, agent.source, agent.origin) == ("counter", "code", "culmtest_pkg:app")
    assert [e.result for e in events if e.type == "tool_complete"] == ["3"]  # type: ignore[union-attr]
    assert run.agent == "counter"


async def test_entry_points_can_be_turned_off(site: Path, tmp_path: Path) -> None:
    install_package(site, "culmtest_pkg", "counting")
    engine = culm.Engine(settings(tmp_path, entry_point_apps=False))
    assert engine.apps == []


async def test_engine_app_and_its_schedule_made_once(tmp_path: Path) -> None:
    app = culm.App("sched")
    app.schedule("nightly", cron="0 3 * * *", model="scripted:echo", message="tidy up")
    for _ in range(2):  # a second start finds it and leaves it
        async with culm.Engine(settings(tmp_path, scheduler=False), app=app) as engine:
            schedules = await engine.schedules.list()
    [schedule] = schedules
    assert schedule.name == "nightly" and schedule.run_config.message == "tidy up"


def test_culm_app_names_apps_comma_separated(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CULM_APP", "one.main:app, two:app")
    monkeypatch.setenv("CULM_ENTRY_POINT_APPS", "false")
    loaded = culm.Settings(home=tmp_path)
    assert (loaded.app, loaded.entry_point_apps) == (["one.main:app", "two:app"], False)
