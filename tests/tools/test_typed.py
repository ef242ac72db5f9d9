"""``@culm.tool``: schemas from type hints and docstrings, validation, sync/async, ctx."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

import culm
from culm.errors import ToolFailure
from culm.tools.base import ToolContext
from culm.tools.typed import ToolDefinitionError, parse_docstring
from tests.support import collect, settings, tool_turn


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(BaseModel):
    x: int
    y: int = 0


@dataclasses.dataclass
class Pair:
    a: int
    b: str


def f_str(name: str) -> str:
    return name


def f_defaults(count: int = 3, ratio: float = 0.5, flag: bool = False) -> str:
    return ""


def f_optional(note: str | None = None) -> str:
    return ""


def f_literal(unit: Literal["C", "F"] = "C") -> str:
    return ""


def f_enum(color: Color) -> str:
    return ""


def f_list(tags: list[str], scores: dict[str, int]) -> str:
    return ""


def f_nested(point: Point, points: list[Point] | None = None) -> str:
    return ""


def f_annotated(n: Annotated[int, Field(ge=1, le=10)]) -> str:
    return ""


def f_ctx(path: str, ctx: ToolContext) -> str:
    return ""


def f_nothing() -> str:
    return ""


def f_shadowing(schema: str, json: int, model_config: bool) -> str:
    return ""


POINT = {
    "type": "object",
    "properties": {"x": {"type": "integer"}, "y": {"type": "integer", "default": 0}},
    "required": ["x"],
}

SCHEMAS: list[tuple[Any, dict[str, Any]]] = [
    (f_str, {"properties": {"name": {"type": "string"}}, "required": ["name"]}),
    (
        f_defaults,
        {
            "properties": {
                "count": {"type": "integer", "default": 3},
                "ratio": {"type": "number", "default": 0.5},
                "flag": {"type": "boolean", "default": False},
            }
        },
    ),
    (
        f_optional,
        {
            "properties": {
                "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}
            }
        },
    ),
    (f_literal, {"properties": {"unit": {"enum": ["C", "F"], "type": "string", "default": "C"}}}),
    (
        f_enum,
        {
            "$defs": {"Color": {"enum": ["red", "blue"], "type": "string"}},
            "properties": {"color": {"$ref": "#/$defs/Color"}},
            "required": ["color"],
        },
    ),
    (
        f_list,
        {
            "properties": {
                "tags": {"type": "array", "items": {"type": "string"}},
                "scores": {"type": "object", "additionalProperties": {"type": "integer"}},
            },
            "required": ["tags", "scores"],
        },
    ),
    (
        f_nested,
        {
            "$defs": {"Point": POINT},
            "properties": {
                "point": {"$ref": "#/$defs/Point"},
                "points": {
                    "anyOf": [
                        {"type": "array", "items": {"$ref": "#/$defs/Point"}},
                        {"type": "null"},
                    ],
                    "default": None,
                },
            },
            "required": ["point"],
        },
    ),
    (
        f_annotated,
        {"properties": {"n": {"type": "integer", "minimum": 1, "maximum": 10}}, "required": ["n"]},
    ),
    (f_ctx, {"properties": {"path": {"type": "string"}}, "required": ["path"]}),
    (f_nothing, {"properties": {}}),
    (
        f_shadowing,
        {
            "properties": {
                "schema": {"type": "string"},
                "json": {"type": "integer"},
                "model_config": {"type": "boolean"},
            },
            "required": ["schema", "json", "model_config"],
        },
    ),
]


@pytest.mark.parametrize(
    ("function", "expected"), SCHEMAS, ids=lambda v: getattr(v, "__name__", "")
)
def test_schema_from_type_hints(function: Any, expected: dict[str, Any]) -> None:
    tool = culm.tool(function)
    assert tool.name == function.__name__
    assert tool.parameters == {"type": "object", "additionalProperties": False, **expected}


def google(city: str, days: int = 1) -> str:
    """The weather forecast.

    Looks it up somewhere.

    Args:
        city (str): the city's name,
            in English.
        days: how many days ahead.

    Returns:
        The forecast.
    """
    return city


def numpy_style(city: str, days: int = 1) -> str:
    """The weather forecast.

    Parameters
    ----------
    city : str
        the city's name,
        in English.
    days : int, optional
        how many days ahead.

    Returns
    -------
    str
    """
    return city


def rest_style(city: str, days: int = 1) -> str:
    """The weather forecast.

    :param city: the city's name,
        in English.
    :param int days: how many days ahead.
    :returns: the forecast.
    """
    return city


@pytest.mark.parametrize("function", [google, numpy_style, rest_style])
def test_descriptions_from_the_docstring(function: Any) -> None:
    tool = culm.tool(function)
    assert tool.description.startswith("The weather forecast.")
    assert "Returns" not in tool.description and ":param" not in tool.description
    props = tool.parameters["properties"]
    assert props["city"]["description"] == "the city's name, in English."
    assert props["days"]["description"] == "how many days ahead."


def test_options_name_and_description() -> None:
    @culm.tool(
        name="lookup", description="Look it up.", read_only=True, timeout=5, require_approval=True
    )
    def f(q: str) -> str:
        return q

    assert (f.name, f.description, f.read_only, f.timeout, f.require_approval) == (
        "lookup",
        "Look it up.",
        True,
        5,
        True,
    )
    assert f("direct") == "direct"  # still callable as a function


def test_docstring_without_sections_is_all_summary() -> None:
    assert parse_docstring("Just text.\n\nMore text.").summary == "Just text.\n\nMore text."


class Opaque:
    pass


def untyped(x) -> str:  # type: ignore[no-untyped-def]
    return ""


def star(*args: int) -> str:
    return ""


def opaque(x: Opaque) -> str:
    return ""


@pytest.mark.parametrize(
    ("function", "problem"),
    [
        (untyped, "parameter 'x': has no type hint"),
        (star, "parameter 'args': a tool takes named parameters only"),
        (opaque, "tool 'opaque'"),
    ],
)
def test_a_bad_tool_is_refused_naming_it(function: Any, problem: str) -> None:
    with pytest.raises(ToolDefinitionError, match=problem):
        culm.tool(function)


def test_a_bad_name_is_refused() -> None:
    with pytest.raises(ToolDefinitionError, match="letters, digits"):
        culm.tool(name="has space")(f_str)


def _ctx(tmp_path: Path) -> ToolContext:
    return ToolContext(workspace=tmp_path, tool_call_id="c1", emit_output=lambda _: None, timeout=5)


async def test_arguments_are_validated_naming_the_field(tmp_path: Path) -> None:
    tool = culm.tool(f_nested)
    with pytest.raises(ToolFailure, match=r"point\.x: Input should be a valid integer"):
        await tool.run({"point": {"x": "many"}}, _ctx(tmp_path))
    with pytest.raises(ToolFailure, match=r"point: Field required"):
        await tool.run({}, _ctx(tmp_path))
    with pytest.raises(ToolFailure, match=r"extra: Extra inputs are not permitted"):
        await tool.run({"point": {"x": 1}, "extra": 1}, _ctx(tmp_path))


async def test_results_str_as_is_else_json(tmp_path: Path) -> None:
    @culm.tool
    def text() -> str:
        return "plain"

    @culm.tool
    def model(point: Point) -> Point:
        return point

    @culm.tool
    def pair() -> Pair:
        return Pair(1, "x")

    @culm.tool
    def numbers() -> list[int]:
        return [1, 2]

    ctx = _ctx(tmp_path)
    assert await text.run({}, ctx) == "plain"
    assert await model.run({"point": {"x": 3}}, ctx) == '{"x":3,"y":0}'
    assert await pair.run({}, ctx) == '{"a":1,"b":"x"}'
    assert await numbers.run({}, ctx) == "[1,2]"


async def test_sync_runs_in_a_worker_thread_async_on_the_loop(tmp_path: Path) -> None:
    seen: dict[str, str] = {}

    @culm.tool
    def sync_tool() -> str:
        seen["sync"] = threading.current_thread().name
        return "s"

    @culm.tool
    async def async_tool() -> str:
        seen["async"] = threading.current_thread().name
        return "a"

    ctx = _ctx(tmp_path)
    assert await sync_tool.run({}, ctx) == "s"
    assert await async_tool.run({}, ctx) == "a"
    assert seen["async"] == threading.current_thread().name
    assert seen["sync"] != seen["async"]


async def test_a_cancelled_sync_tool_is_not_waited_for(tmp_path: Path) -> None:
    release = threading.Event()
    entered = threading.Event()

    @culm.tool
    def blocking() -> str:
        entered.set()
        release.wait(30)
        return "late"

    task = asyncio.create_task(blocking.run({}, _ctx(tmp_path)))
    await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task  # returns at once although the thread still runs
    release.set()


async def test_ctx_is_injected(tmp_path: Path) -> None:
    @culm.tool
    async def where(name: str, ctx: culm.ToolContext) -> str:
        ctx.emit_output("working")
        return f"{name} in {ctx.workspace.name} for {ctx.tool_call_id}"

    out: list[str] = []
    ctx = ToolContext(workspace=tmp_path, tool_call_id="c9", emit_output=out.append, timeout=5)
    assert await where.run({"name": "n"}, ctx) == f"n in {tmp_path.name} for c9"
    assert out == ["working"]


async def test_in_a_run_a_validation_error_reaches_the_model(tmp_path: Path) -> None:
    """The model sees the error result naming the field, and can try again."""
    calls: list[int] = []

    @culm.tool
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        calls.append(a + b)
        return a + b

    from culm.providers.scripted import Script

    async with culm.Engine(settings(tmp_path), tools=[add]) as engine:
        engine.scripts.register(
            "adder",
            Script(
                turns=[
                    tool_turn("add", {"a": 1, "b": "two"}),
                    tool_turn("add", {"a": 1, "b": 2}),
                    [{"text": "3"}],
                ]
            ),
        )
        session = await engine.create_session(model="scripted:adder", tools=["add"])
        run = await engine.start_run(session.session_id, "1+2?")
        events = await collect(engine.subscribe(run.run_id))
        messages = await engine.get_messages(session.session_id)
    errors = [e for e in events if e.type == "tool_error"]
    assert len(errors) == 1 and "b: Input should be a valid integer" in errors[0].error  # type: ignore[union-attr]
    assert [e.result for e in events if e.type == "tool_complete"] == ["3"]  # type: ignore[union-attr]
    assert calls == [3]
    tool_results = [m for m in messages if m.role == "tool"]
    assert tool_results[0].is_error and "b:" in tool_results[0].content  # type: ignore[union-attr]
    assert events[-1].type == "complete"
