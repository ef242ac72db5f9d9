"""Run a round's tool calls.

Consecutive read-only calls run concurrently; any other call runs alone, in order. A failing,
timing-out, unknown or badly-called tool becomes an error result for the model, never a run
failure. Results come back in the order of the calls.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

from culm.domain.events import ToolComplete, ToolError, ToolStart, ToolToken
from culm.domain.models import ToolCall, ToolResultMessage
from culm.errors import ToolFailure
from culm.logs import get_logger
from culm.loop.context import LoopContext
from culm.tools.base import Tool, ToolContext

log = get_logger(__name__)


async def run_tool_calls(ctx: LoopContext, calls: Sequence[ToolCall]) -> list[ToolResultMessage]:
    cap = ctx.limits.max_tool_calls_per_round
    allowed, refused = calls[:cap], calls[cap:]
    results: list[ToolResultMessage] = []
    for batch in _batches(ctx, allowed):
        if len(batch) == 1:
            results.append(await run_tool_call(ctx, batch[0]))
        else:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(run_tool_call(ctx, call)) for call in batch]
            results.extend(task.result() for task in tasks)
    for call in refused:
        message = f"too many tool calls in one round (limit {cap}); call again in the next round"
        results.append(_refuse(ctx, call, message))
    return results


def _batches(ctx: LoopContext, calls: Sequence[ToolCall]) -> list[list[ToolCall]]:
    """Split calls into runs of consecutive read-only calls and single other calls."""
    batches: list[list[ToolCall]] = []
    for call in calls:
        if _read_only(ctx, call) and batches and _read_only(ctx, batches[-1][0]):
            batches[-1].append(call)
        else:
            batches.append([call])
    return batches


def _read_only(ctx: LoopContext, call: ToolCall) -> bool:
    tool = ctx.tools.get(call.name)
    return tool is not None and tool.read_only


async def run_tool_call(ctx: LoopContext, call: ToolCall) -> ToolResultMessage:
    """Run one call inside its ``execute_tool`` span (a failed call: ``error.type``)."""
    with ctx.tracing.tool(call.name, call.id, call.arguments) as span:
        result = await _run_tool_call(ctx, call)
        ctx.tracing.tool_result(span, result.content)
        if result.is_error:
            ctx.tracing.tool_failed(span, "tool_error", result.content)
        return result


async def _run_tool_call(ctx: LoopContext, call: ToolCall) -> ToolResultMessage:
    arguments = parse_arguments(call.arguments)
    ctx.emit(ToolStart(tool_call_id=call.id, tool_name=call.name, arguments=arguments))
    clock = _Clock(time.monotonic())
    try:
        result = await _invoke(ctx, call, arguments, clock)
    except ToolFailure as exc:
        return failed_result(ctx, call, str(exc) or type(exc).__name__, clock.started)
    except Exception as exc:
        log.exception("tool raised", tool=call.name)
        return failed_result(ctx, call, f"{type(exc).__name__}: {exc}", clock.started)
    elapsed = _elapsed_ms(clock.started)
    ctx.emit(
        ToolComplete(tool_call_id=call.id, tool_name=call.name, result=result, elapsed_ms=elapsed)
    )
    return ToolResultMessage(tool_call_id=call.id, tool_name=call.name, content=result)


class _Clock:
    """A call's start, moved on by the time its tool says not to count (``not_counted``)."""

    __slots__ = ("started",)

    def __init__(self, started: float) -> None:
        self.started = started

    def not_counted(self, seconds: float) -> None:
        self.started += seconds


async def _invoke(ctx: LoopContext, call: ToolCall, arguments: Any, clock: _Clock) -> str:
    tool: Tool | None = ctx.tools.get(call.name)
    if tool is None:
        available = ", ".join(sorted(ctx.tools)) or "none"
        raise ToolFailure(f"unknown tool {call.name!r} (enabled tools: {available})")
    if not isinstance(arguments, dict):
        raise ToolFailure(f"arguments for {call.name} must be a JSON object, got: {call.arguments}")
    timeout = tool.timeout if tool.timeout is not None else ctx.limits.tool_timeout

    def emit_output(text: str) -> None:
        ctx.emit(ToolToken(tool_call_id=call.id, content=text))

    tool_ctx = ToolContext(
        workspace=ctx.workspace,
        tool_call_id=call.id,
        emit_output=emit_output,
        timeout=timeout,
        run_id=ctx.run_id,
        session_id=ctx.session.session_id,
        emit_event=ctx.emit,
        not_counted=clock.not_counted,
    )
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            return await tool.run(arguments, tool_ctx)
    except TimeoutError:
        if deadline.expired():
            raise ToolFailure(f"{call.name} timed out after {timeout:g} s") from None
        raise


def parse_arguments(raw: str) -> Any:
    try:
        return json.loads(raw or "{}")
    except json.JSONDecodeError:
        return raw


def failed_result(
    ctx: LoopContext, call: ToolCall, error: str, started: float
) -> ToolResultMessage:
    ctx.emit(
        ToolError(
            tool_call_id=call.id,
            tool_name=call.name,
            error=error,
            elapsed_ms=_elapsed_ms(started),
        )
    )
    return ToolResultMessage(
        tool_call_id=call.id, tool_name=call.name, content=f"error: {error}", is_error=True
    )


def _refuse(ctx: LoopContext, call: ToolCall, error: str) -> ToolResultMessage:
    arguments = parse_arguments(call.arguments)
    ctx.emit(ToolStart(tool_call_id=call.id, tool_name=call.name, arguments=arguments))
    return failed_result(ctx, call, error, time.monotonic())


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
