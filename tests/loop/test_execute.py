"""A round's tool calls without an engine: how they are batched, what each reports (its time,
its error, the log line of a tool that raised), and the deadline of a slow one."""

from __future__ import annotations

import asyncio
import logging
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest

from culm.domain.events import ToolComplete, ToolError, ToolStart
from culm.domain.models import ToolCall, ToolResultMessage
from culm.loop import execute
from culm.loop.context import LoopLimits
from culm.loop.execute import _batches, run_tool_calls
from culm.tools.base import Tool, ToolContext
from tests.clock import run_virtual
from tests.loop.fakes import Clock, Harness, PlayedModel
from tests.support import FailingTool, RecordingTool, SleepTool


class Reader(Tool):
    name: ClassVar[str] = "reader"
    description: ClassVar[str] = "Reads."
    parameters: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}
    read_only: ClassVar[bool] = True

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        return "read"


class Timed(Tool):
    """Takes ``seconds`` of the test's clock, of which ``paused`` are not counted; fails when
    ``fail`` is set."""

    name: ClassVar[str] = "timed"
    description: ClassVar[str] = "Takes time."
    parameters: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}

    def __init__(self, clock: Clock, seconds: float, paused: float, fail: bool = False) -> None:
        self.clock, self.seconds, self.paused, self.fail = clock, seconds, paused, fail

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        self.clock.now += self.seconds
        ctx.not_counted(self.paused)
        if self.fail:
            raise RuntimeError("late")
        return "on time"


class OwnTimeout(Tool):
    """Raises a ``TimeoutError`` of its own, well within its deadline."""

    name: ClassVar[str] = "own_timeout"
    description: ClassVar[str] = "Times out by itself."
    parameters: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        raise TimeoutError("upstream took too long")


def call(name: str, call_id: str = "c1", arguments: str = "{}") -> ToolCall:
    return ToolCall(id=call_id, name=name, arguments=arguments)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(execute, "time", types.SimpleNamespace(monotonic=clock))
    return clock


def test_consecutive_read_only_calls_share_a_batch_and_the_others_run_alone(
    tmp_path: Path,
) -> None:
    harness = Harness()
    ctx = harness.context(PlayedModel(), tmp_path, tools=[Reader(), RecordingTool()])
    names = ["reader", "reader", "record", "reader", "record", "record", "nope", "reader"]
    batches = _batches(ctx, [call(name, str(i)) for i, name in enumerate(names)])
    assert [[c.name for c in batch] for batch in batches] == [
        ["reader", "reader"],
        ["record"],
        ["reader"],
        ["record"],
        ["record"],
        ["nope"],  # an unknown tool is not read-only
        ["reader"],
    ]


@pytest.mark.parametrize(("fail", "kind"), [(False, ToolComplete), (True, ToolError)])
async def test_a_calls_time_leaves_out_what_its_tool_did_not_count(
    tmp_path: Path, clock: Clock, fail: bool, kind: type[Any]
) -> None:
    harness = Harness()
    tool = Timed(clock, seconds=1.5, paused=0.5, fail=fail)
    ctx = harness.context(PlayedModel(), tmp_path, tools=[tool])
    await run_tool_calls(ctx, [call("timed")])
    [ended] = harness.of(kind)
    assert ended.elapsed_ms == 1000


async def test_a_refused_call_takes_no_time(tmp_path: Path, clock: Clock) -> None:
    harness = Harness()
    tool = Timed(clock, seconds=1.5, paused=0)
    limits = LoopLimits(max_tool_calls_per_round=1)
    ctx = harness.context(PlayedModel(), tmp_path, tools=[tool], limits=limits)
    results = await run_tool_calls(ctx, [call("timed", "a"), call("timed", "b", '{"x": 1}')])
    assert [r.is_error for r in results] == [False, True]
    assert [e.elapsed_ms for e in harness.of(ToolComplete)] == [1500]
    [refused] = harness.of(ToolError)
    assert (refused.tool_call_id, refused.elapsed_ms) == ("b", 0)
    assert [e.arguments for e in harness.of(ToolStart)] == [{}, {"x": 1}]


async def test_a_tool_that_raises_is_logged_with_its_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = Harness().context(PlayedModel(), tmp_path, tools=[FailingTool()])
    with caplog.at_level(logging.ERROR, logger="culm.loop.execute"):
        [result] = await run_tool_calls(ctx, [call("explode")])
    assert result == ToolResultMessage(
        tool_call_id="c1", tool_name="explode", content="error: RuntimeError: kaboom", is_error=True
    )
    [record] = [r for r in caplog.records if r.name == "culm.loop.execute"]
    assert (record.levelno, record.getMessage()) == (logging.ERROR, "tool raised tool=explode")
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)


def test_a_slow_tool_is_stopped_at_its_deadline(tmp_path: Path) -> None:
    sleeper = SleepTool()
    sleeper.timeout = 2.5
    harness = Harness()
    ctx = harness.context(PlayedModel(), tmp_path, tools=[sleeper])

    async def check() -> None:
        loop = asyncio.get_running_loop()
        [result] = await run_tool_calls(ctx, [call("sleep")])
        assert result.content == "error: sleep timed out after 2.5 s"
        assert loop.time() == 2.5

    run_virtual(check())


async def test_a_tools_own_timeout_error_is_not_its_deadline(tmp_path: Path) -> None:
    harness = Harness()
    ctx = harness.context(PlayedModel(), tmp_path, tools=[OwnTimeout()])
    [result] = await run_tool_calls(ctx, [call("own_timeout")])
    assert result.content == "error: TimeoutError: upstream took too long"
