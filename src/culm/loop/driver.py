"""The agent loop: one streaming-first driver over rounds.

A round builds the request, streams the model (live ``token`` events), classifies the response,
runs the tool calls, and returns the next step. The driver only dispatches on that step.
Failures raise :class:`culm.errors.RunFailure`; cancellation is the owning task's cancel.
A round's messages (the assistant's, then its tool results) are stored together, in one write
once its tool calls are done: a round cut short leaves none of them in the transcript.

A round's usage is what the provider reported over every attempt of its model call. A call that
fails or is cancelled after usage was reported still ends its round: ``round_completed`` with
``partial`` set, that usage, and the error, emitted before the failure propagates; the run's
usage includes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence

from culm.domain.events import (
    CANCELLED_ROUND_ERROR,
    RoundCompleted,
    RunEvent,
    RunEventBase,
    RunnerProgress,
)
from culm.domain.input import InputRequest
from culm.errors import LimitExceededError, ModelError, describe
from culm.loop.approval import WaitForInput, apply_answers, split_calls
from culm.loop.classify import ModelResponse
from culm.loop.context import FinalAnswer, LoopContext, LoopState, NextStep, RunAgain
from culm.loop.execute import run_tool_calls
from culm.loop.model_call import UsageMeter, call_model
from culm.loop.window import ContextWindow
from culm.providers.base import ModelRequest
from culm.tools.compact import COMPACT_TOOL


async def run_agent(
    ctx: LoopContext,
    state: LoopState,
    answered: Sequence[InputRequest] = (),
    *,
    recovered: bool = False,
) -> FinalAnswer | WaitForInput:
    """Run rounds until the model gives a final answer, or a round waits for a person. A round
    that took the run past its budget ends it (``budget_exceeded``) unless that round gave the
    final answer.

    ``answered``: a run resumed after waiting: the answers to its waiting calls, applied
    first (their results are stored, and the requests marked applied, in one write);
    ``recovered``: by a later attempt than the one they were given to (approved calls are not
    run: that attempt may have run them before it was lost)."""
    ctx = _metered(ctx, state)
    with ctx.tracing.agent():
        if answered:
            results = await apply_answers(ctx, state.messages, answered, recovered=recovered)
            state.messages.extend(results)
            await ctx.resolve_input(results, [request.request_id for request in answered])
        window = await ContextWindow.open(ctx, state)
        while True:
            step = await run_round(ctx, state, window)
            match step:
                case FinalAnswer() | WaitForInput():
                    return step
                case RunAgain():
                    state.spend.check(ctx.budget)
                    continue


def _metered(ctx: LoopContext, state: LoopState) -> LoopContext:
    """``ctx`` whose ``emit`` also counts what each event spent (the run's rounds and its
    sub-agents') in ``state.spend``."""
    emit, spend = ctx.emit, state.spend

    def emit_metered(event: RunEventBase) -> RunEvent:
        spend.observe(event)
        return emit(event)

    return dataclasses.replace(ctx, emit=emit_metered)


async def run_round(
    ctx: LoopContext, state: LoopState, window: ContextWindow
) -> NextStep | WaitForInput:
    if state.round >= ctx.limits.max_rounds:
        raise LimitExceededError(
            f"the run reached max rounds ({ctx.limits.max_rounds}) without a final answer"
        )
    state.round += 1
    ctx.emit(RunnerProgress(round_count=state.round))
    request = await window.prepare()
    started = time.monotonic()
    meter = UsageMeter()
    try:
        response, request = await _call_model(ctx, window, request, meter)
    except BaseException as exc:
        if meter.reported:  # the provider reported usage before the call failed: count it
            _round_completed(ctx, state, meter, started, error=_describe(exc))
        raise
    usage = meter.total
    _round_completed(ctx, state, meter, started)
    window.reported(request, usage)
    message = response.message
    state.messages.append(message)
    if not message.tool_calls:  # the runtime stores it with the run's end
        return FinalAnswer(message.content, messages=(message,))
    calls, asks, refused = split_calls(ctx, message.tool_calls)
    results = [*refused, *await run_tool_calls(ctx, calls)]
    window.compact_requested |= any(r.tool_name == COMPACT_TOOL and not r.is_error for r in results)
    state.messages.extend(results)
    if asks:  # the runtime stores the round's messages with the requests when it parks
        return WaitForInput(messages=(message, *results), requests=tuple(asks))
    await ctx.append_messages([message, *results])  # the round's messages, in one write
    return RunAgain()


async def _call_model(
    ctx: LoopContext, window: ContextWindow, request: ModelRequest, meter: UsageMeter
) -> tuple[ModelResponse, ModelRequest]:
    """The round's model call, and the request it sent: one the provider refuses as too long
    is compacted (``overflow``) and retried once."""
    try:
        return await call_model(ctx, request, meter), request
    except ModelError as exc:
        if not ctx.context.overflow.is_overflow(exc):
            raise
        first = exc
    retry = await window.recover(request, first)
    try:
        return await call_model(ctx, retry, meter), retry
    except ModelError as exc:
        if ctx.context.overflow.is_overflow(exc):
            raise window.overflowed_again(retry, exc) from exc
        raise


def _round_completed(
    ctx: LoopContext,
    state: LoopState,
    meter: UsageMeter,
    started: float,
    *,
    error: str | None = None,
) -> None:
    """Add the round's usage to the run's and emit ``round_completed`` (``partial`` with the
    error when the model call did not finish). Synchronous: it also runs while cancelled."""
    usage = meter.total
    state.usage += usage
    ctx.emit(
        RoundCompleted(
            round=state.round,
            usage=usage,
            latency_ms=int((time.monotonic() - started) * 1000),
            model=ctx.model.name,
            partial=error is not None,
            error=error,
            cost_usd=ctx.price(ctx.model.name, usage),
            first_chunk_ms=meter.first_chunk_ms,
            response_model=meter.response_model,
        )
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return CANCELLED_ROUND_ERROR
    return describe(exc)
