"""People in the loop, the loop's side: which of a round's tool calls wait for a person, and,
when the run resumes, what becomes of them.

A round whose calls include some that need a person (see :mod:`culm.input.policy`) runs the
others at once, then returns :class:`WaitForInput` with the round's messages and one
:class:`PendingInput` per waiting call: the runtime parks the run. On resume the answered
requests are applied to the calls still without a result: an approved call runs (with the
person's arguments, if edited), a denied one gets an error result with the reason, a question
gets the answer as its result. Time spent waiting is in no ``elapsed_ms``: a call's clock
starts when it runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from culm.domain.events import ToolComplete, ToolStart
from culm.domain.input import InputAnswer, InputKind, InputRequest
from culm.domain.models import (
    AssistantMessage,
    Message,
    ToolCall,
    ToolResultMessage,
)
from culm.domain.time import new_id
from culm.input.policy import asks_user, needs_approval
from culm.loop.context import LoopContext
from culm.loop.execute import failed_result, parse_arguments, run_tool_call

RECOVERED_APPROVAL = (
    "interrupted: the run was recovered after this call was approved; it may have run, "
    "and it is not run again"
)


@dataclass(frozen=True, slots=True)
class PendingInput:
    """A request the round makes, before it is stored (the store adds times)."""

    request_id: str
    kind: InputKind
    call: ToolCall
    arguments: Any
    question: str | None = None
    choices: list[str] | None = None


@dataclass(frozen=True, slots=True)
class WaitForInput:
    """The round's outcome when some calls wait: its messages (the assistant's and the results
    of the calls that ran) and the requests, all stored when the run parks."""

    messages: tuple[Message, ...]
    requests: tuple[PendingInput, ...]


def split_calls(
    ctx: LoopContext, calls: Sequence[ToolCall]
) -> tuple[list[ToolCall], list[PendingInput], list[ToolResultMessage]]:
    """The calls to run now, the requests to make, and the results of malformed questions
    (an ``ask_user`` call without a question is answered at once with an error)."""
    now: list[ToolCall] = []
    asks: list[PendingInput] = []
    refused: list[ToolResultMessage] = []
    patterns = ctx.session.require_approval
    for call in calls:
        tool = ctx.tools.get(call.name)
        arguments = parse_arguments(call.arguments)
        if asks_user(call.name, tool):
            question = _question(arguments)
            if question is None:
                message = "ask_user needs a non-empty `question` (and `choices`: a list of strings)"
                ctx.emit(ToolStart(tool_call_id=call.id, tool_name=call.name, arguments=arguments))
                refused.append(failed_result(ctx, call, message, time.monotonic()))
                continue
            choices = arguments.get("choices")
            asks.append(PendingInput(new_id(), "question", call, arguments, question, choices))
        elif needs_approval(patterns, call.name, tool):
            asks.append(PendingInput(new_id(), "approval", call, arguments))
        else:
            now.append(call)
    return now, asks, refused


def _question(arguments: Any) -> str | None:
    if not isinstance(arguments, dict):
        return None
    question, choices = arguments.get("question"), arguments.get("choices")
    if not isinstance(question, str) or not question.strip():
        return None
    if choices is not None and not (
        isinstance(choices, list) and all(isinstance(c, str) for c in choices)
    ):
        return None
    return question


def pending_calls(messages: Sequence[Message]) -> list[ToolCall]:
    """The calls of the last assistant message that have no result yet."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, AssistantMessage):
            answered = {
                m.tool_call_id for m in messages[index + 1 :] if isinstance(m, ToolResultMessage)
            }
            return [call for call in message.tool_calls if call.id not in answered]
    return []


async def apply_answers(
    ctx: LoopContext,
    messages: list[Message],
    requests: Sequence[InputRequest],
    *,
    recovered: bool = False,
) -> list[ToolResultMessage]:
    """The results of the waiting calls that ``requests`` answered, in call order (the calls
    run now); calls no request answers are left (the transcript repair ends them).

    ``recovered``: the attempt that resumed with these answers was lost (a crash) before it
    stored their results, and a recovery re-queued the run: an approved call may have run
    then, so it is not run again; it gets an error result saying so (as the transcript repair
    ends a call a crash interrupted). Denials and answers are applied as usual."""
    by_call = {request.tool_call_id: request for request in requests if request.answer}
    results: list[ToolResultMessage] = []
    for call in pending_calls(messages):
        request = by_call.get(call.id)
        if request is not None and request.answer is not None:
            results.append(await _apply(ctx, call, request, request.answer, recovered))
    return results


async def _apply(
    ctx: LoopContext, call: ToolCall, request: InputRequest, answer: InputAnswer, recovered: bool
) -> ToolResultMessage:
    if request.kind == "question":
        return _answered(ctx, call, answer)
    if not answer.allowed or recovered:
        text = denial_text(answer, ctx) if not answer.allowed else RECOVERED_APPROVAL
        ctx.emit(ToolStart(tool_call_id=call.id, tool_name=call.name, arguments=request.arguments))
        return failed_result(ctx, call, text, time.monotonic())
    if answer.arguments is None:
        return await run_tool_call(ctx, call)
    edited = call.model_copy(update={"arguments": json.dumps(answer.arguments)})
    result = await run_tool_call(ctx, edited)
    note = f"(the user edited the arguments to {edited.arguments})\n"
    return result.model_copy(update={"content": note + result.content})


def _answered(ctx: LoopContext, call: ToolCall, answer: InputAnswer) -> ToolResultMessage:
    arguments = parse_arguments(call.arguments)
    ctx.emit(ToolStart(tool_call_id=call.id, tool_name=call.name, arguments=arguments))
    if not answer.allowed:
        return failed_result(ctx, call, denial_text(answer, ctx), time.monotonic())
    text = answer.answer or ""
    ctx.emit(ToolComplete(tool_call_id=call.id, tool_name=call.name, result=text, elapsed_ms=0))
    return ToolResultMessage(tool_call_id=call.id, tool_name=call.name, content=text)


def denial_text(answer: InputAnswer, ctx: LoopContext) -> str:
    if answer.timed_out:
        timeout = ctx.session.input_timeout or 0
        return f"denied: no answer from the user within {timeout:g} s"
    text = "denied by the user"
    return f"{text}: {answer.reason}" if answer.reason else text
