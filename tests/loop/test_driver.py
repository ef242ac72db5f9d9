"""The driver's rounds without an engine: what a round emits and stores, a model call cut short
after it reported usage, the round limit, the budget, and the system prompt sent."""

from __future__ import annotations

import asyncio
import dataclasses
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from culm.context.budget import ContextLimits
from culm.domain.events import ContextCompacted, RoundCompleted, RunnerProgress, Token
from culm.domain.input import InputAnswer, InputRequest
from culm.domain.models import (
    AssistantMessage,
    Message,
    ToolCall,
    ToolResultMessage,
    Usage,
    UserMessage,
)
from culm.domain.time import utc_now
from culm.errors import (
    BudgetExceededError,
    ContextOverflowError,
    LimitExceededError,
    ModelRequestError,
)
from culm.loop import driver
from culm.loop.approval import WaitForInput
from culm.loop.context import ContextSettings, FinalAnswer, LoopLimits, LoopState, RunAgain
from culm.loop.driver import run_agent, run_round
from culm.loop.spend import RunBudget
from culm.loop.window import ContextWindow
from culm.providers.base import Finish, TextDelta, ToolCallDelta, UsageReport
from culm.tools.compact import COMPACT_TOOL
from tests.loop.fakes import Clock, Harness, PlayedModel, price_per_token
from tests.support import RecordingTool

USAGE = Usage(prompt_tokens=40, completion_tokens=2, total_tokens=42)


def answer(text: str, usage: Usage = USAGE, model: str | None = None) -> Any:
    return (
        [TextDelta(text=text), UsageReport(usage=usage, model=model), Finish(reason="stop")],
        None,
    )


def tool_call(name: str, call_id: str = "c1", arguments: str = "{}") -> Any:
    parts = [ToolCallDelta(index=0, id=call_id, name=name, arguments=arguments)]
    return ([*parts, UsageReport(usage=USAGE), Finish(reason="tool_calls")], None)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The driver's and the chat span's ``time.monotonic``, moved by the test."""
    clock = Clock()
    monkeypatch.setattr(driver, "time", types.SimpleNamespace(monotonic=clock))
    from culm.tracing import spans

    monkeypatch.setattr(spans, "time", types.SimpleNamespace(monotonic=clock))
    return clock


def state(*messages: Message) -> LoopState:
    return LoopState(messages=[UserMessage(content="go"), *messages])


def final(text: str) -> FinalAnswer:
    """The run's answer, its message not stored yet (the runtime stores it with the run's end)."""
    return FinalAnswer(text, messages=(AssistantMessage(content=text),))


async def one_round(ctx: Any, loop_state: LoopState) -> Any:
    return await run_round(ctx, loop_state, await ContextWindow.open(ctx, loop_state))


async def test_a_final_answer_is_handed_to_the_runtime_with_its_round_completed(
    tmp_path: Path, clock: Clock
) -> None:
    harness = Harness()
    played = PlayedModel(answer("hi", model="fake-2"))

    class Slow(PlayedModel):
        async def stream(self, request: Any) -> Any:
            clock.now += 0.25  # before the first chunk
            async for part in played.stream(request):
                clock.now += 1.0
                yield part

    model = Slow(name="fake:played")
    ctx = harness.context(model, tmp_path, price=price_per_token)
    loop_state = state()
    step = await one_round(ctx, loop_state)
    assert step == final("hi")
    assert harness.writes == []  # the runtime stores it with the run's end, in one write
    assert loop_state.messages[-1] == AssistantMessage(content="hi")
    [done] = harness.of(RoundCompleted)
    assert done.model_dump(exclude={"ts"}) == RoundCompleted(
        round=1,
        usage=USAGE,
        latency_ms=3250,
        model="fake:played",
        cost_usd=0.042,
        first_chunk_ms=1250,
        response_model="fake-2",
    ).model_dump(exclude={"ts"})
    assert loop_state.usage == USAGE
    assert [e.round_count for e in harness.of(RunnerProgress)] == [1]
    assert [e.content for e in harness.of(Token)] == ["hi"]


class FailsAfterUsage(PlayedModel):
    """Reports usage, then fails with ``error`` (or waits to be cancelled: ``error`` None)."""

    def __init__(self, error: BaseException | None, clock: Clock) -> None:
        super().__init__()
        self.error = error
        self.clock = clock
        self.reported = asyncio.Event()

    async def stream(self, request: Any) -> Any:
        yield UsageReport(usage=USAGE)
        self.clock.now += 2.0
        self.reported.set()
        if self.error is not None:
            raise self.error
        await asyncio.Event().wait()


async def test_a_call_failing_after_it_reported_usage_still_completes_its_round(
    tmp_path: Path, clock: Clock
) -> None:
    harness = Harness()
    model = FailsAfterUsage(ModelRequestError("bad request", status=400), clock)
    ctx = harness.context(model, tmp_path, price=price_per_token)
    loop_state = state()
    with pytest.raises(ModelRequestError):
        await one_round(ctx, loop_state)
    [done] = harness.of(RoundCompleted)
    assert (done.partial, done.error, done.usage, done.latency_ms) == (
        True,
        "bad request",
        USAGE,
        2000,
    )
    assert (done.round, done.model, done.cost_usd) == (1, "fake:played", 0.042)
    assert loop_state.usage == USAGE
    assert harness.writes == []


async def test_a_cancel_after_usage_completes_the_round_as_cancelled(
    tmp_path: Path, clock: Clock
) -> None:
    harness = Harness()
    model = FailsAfterUsage(None, clock)
    ctx = harness.context(model, tmp_path)
    loop_state = state()
    task = asyncio.create_task(one_round(ctx, loop_state))
    await model.reported.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [done] = harness.of(RoundCompleted)
    assert (done.partial, done.error, done.usage) == (True, "cancelled", USAGE)
    assert loop_state.usage == USAGE


async def test_a_call_failing_before_any_usage_emits_no_round(tmp_path: Path) -> None:
    harness = Harness()
    model = PlayedModel(([TextDelta(text="x")], ModelRequestError("", status=400)))
    ctx = harness.context(model, tmp_path)
    with pytest.raises(ModelRequestError):
        await one_round(ctx, state())
    assert harness.of(RoundCompleted) == []


@pytest.mark.parametrize("done", [0, 2])
async def test_rounds_run_up_to_max_rounds_and_not_one_more(tmp_path: Path, done: int) -> None:
    harness = Harness()
    ctx = harness.context(PlayedModel(answer("ok")), tmp_path, limits=LoopLimits(max_rounds=3))
    loop_state = state()
    loop_state.round = done
    assert await one_round(ctx, loop_state) == final("ok")
    assert loop_state.round == done + 1
    with pytest.raises(LimitExceededError, match=r"max rounds \(3\)"):
        loop_state.round = 3
        await one_round(ctx, loop_state)
    assert loop_state.round == 3


async def test_the_request_carries_the_sessions_system_prompt_and_tools(tmp_path: Path) -> None:
    harness = Harness()
    model = PlayedModel(answer("ok"))
    ctx = harness.context(model, tmp_path, tools=[RecordingTool()], system_prompt="be brief")
    await one_round(ctx, state())
    [request] = model.requests
    assert request.system_prompt == "be brief"
    assert [tool.name for tool in request.tools] == ["record"]
    assert request.messages == [UserMessage(content="go")]


async def test_a_round_with_tool_calls_stores_its_messages_in_one_write(tmp_path: Path) -> None:
    harness = Harness()
    model = PlayedModel(tool_call("record", arguments='{"label": "a"}'))
    ctx = harness.context(model, tmp_path, tools=[RecordingTool()])
    loop_state = state()
    assert await one_round(ctx, loop_state) == RunAgain()
    [write] = harness.writes
    assert [m.role for m in write] == ["assistant", "tool"]
    assert write[0].tool_calls == (ToolCall(id="c1", name="record", arguments='{"label": "a"}'),)
    assert loop_state.messages[1:] == write


@pytest.mark.parametrize(("arguments", "requested"), [("{}", True), ("[1]", False)])
async def test_a_successful_compact_call_asks_the_window_to_compact(
    tmp_path: Path, arguments: str, requested: bool
) -> None:
    from culm.tools.compact import CompactContextTool

    harness = Harness()
    model = PlayedModel(tool_call(COMPACT_TOOL, arguments=arguments))
    ctx = harness.context(model, tmp_path, tools=[CompactContextTool()])
    loop_state = state()
    window = await ContextWindow.open(ctx, loop_state)
    await run_round(ctx, loop_state, window)
    assert window.compact_requested is requested  # bad arguments: an error result


async def test_run_agent_goes_on_until_the_final_answer(tmp_path: Path) -> None:
    harness = Harness()
    model = PlayedModel(tool_call("record", arguments='{"label": "a"}'), answer("done"))
    ctx = harness.context(model, tmp_path, tools=[RecordingTool()])
    loop_state = state()
    assert await run_agent(ctx, loop_state) == final("done")
    assert loop_state.round == 2
    assert loop_state.spend.tokens == 2 * USAGE.total_tokens  # counted from round_completed


@pytest.mark.parametrize(("max_tokens", "rounds"), [(42, 2), (41, 1)])
async def test_a_round_past_the_budget_ends_the_run_before_the_next(
    tmp_path: Path, max_tokens: int, rounds: int
) -> None:
    harness = Harness()
    model = PlayedModel(tool_call("record", arguments='{"label": "a"}'), answer("done"))
    budget = RunBudget(max_tokens=max_tokens)
    ctx = harness.context(model, tmp_path, tools=[RecordingTool()], budget=budget)
    loop_state = state()
    if rounds == 2:
        assert await run_agent(ctx, loop_state) == final("done")
    else:
        with pytest.raises(BudgetExceededError, match=r"max_tokens \(41\)"):
            await run_agent(ctx, loop_state)
    assert loop_state.round == rounds


def approval(call_id: str, *, approve: bool = True) -> InputRequest:
    return InputRequest(
        request_id=f"req_{call_id}",
        run_id="r",
        session_id="s",
        kind="approval",
        tool_call_id=call_id,
        tool_name="record",
        arguments={"label": call_id},
        created_at=utc_now(),
        status="answered",
        answer=InputAnswer(approve=approve),
    )


@pytest.mark.parametrize("recovered", [False, True])
async def test_a_resumed_run_applies_the_answers_first_in_one_write(
    tmp_path: Path, recovered: bool
) -> None:
    harness = Harness()
    resolved: list[tuple[list[Message], list[str]]] = []

    async def resolve(messages: Sequence[Message], request_ids: Sequence[str]) -> None:
        resolved.append((list(messages), list(request_ids)))

    tool = RecordingTool()
    model = PlayedModel(answer("done"))
    ctx = harness.context(model, tmp_path, tools=[tool], resolve_input=resolve)
    waiting = AssistantMessage(
        content="",
        tool_calls=(
            ToolCall(id="a", name="record", arguments='{"label": "a"}'),
            ToolCall(id="b", name="record", arguments='{"label": "b"}'),
        ),
    )
    loop_state = state(waiting)
    answers = [approval("a"), approval("b", approve=False)]
    # Not recovered is the default: a resumed run's attempt is the one the answers were given to.
    options = {"recovered": True} if recovered else {}
    step = await run_agent(ctx, loop_state, answers, **options)
    assert step == final("done")
    [(results, request_ids)] = resolved
    assert request_ids == ["req_a", "req_b"]
    assert [(m.tool_call_id, m.is_error) for m in results] == [("a", recovered), ("b", True)]
    assert tool.log == ([] if recovered else ["enter a", "exit a"])
    assert loop_state.messages[2:4] == results
    assert model.requests[0].messages[1:] == [waiting, *results]  # the model sees them


async def test_a_call_that_needs_approval_parks_the_round_with_its_messages(
    tmp_path: Path,
) -> None:
    harness = Harness()
    model = PlayedModel(tool_call("record", arguments='{"label": "a"}'))
    ctx = harness.context(model, tmp_path, tools=[RecordingTool()])
    ctx = dataclasses.replace(
        ctx, session=ctx.session.model_copy(update={"require_approval": ("record",)})
    )
    loop_state = state()
    step = await run_agent(ctx, loop_state)
    assert isinstance(step, WaitForInput)
    assert step.messages == (loop_state.messages[-1],)
    [request] = step.requests
    assert (request.kind, request.call.id, request.arguments) == ("approval", "c1", {"label": "a"})
    assert harness.writes == []  # the runtime stores them when it parks


TOO_LONG = "prompt is too long: 9000 tokens > 4096 maximum"


def old_rounds(count: int) -> list[Message]:
    """``count`` finished rounds, each with a long tool output: something to compact."""
    messages: list[Message] = []
    for n in range(count):
        call = ToolCall(id=f"old{n}", name="record", arguments="{}")
        messages += [
            UserMessage(content=f"task {n}"),
            AssistantMessage(content="", tool_calls=(call,)),
            ToolResultMessage(tool_call_id=call.id, tool_name="record", content="x" * 8000),
            AssistantMessage(content=f"done {n}"),
        ]
    return messages


def overflow_context(harness: Harness, model: PlayedModel, tmp_path: Path) -> Any:
    limits = ContextLimits(window=4096, output_reserve=512, working_reserve=256, auto_compact=False)
    summarizer = PlayedModel(*[answer("the summary")] * 4, name="fake:summarizer")
    settings = ContextSettings(limits=limits, summarizer=summarizer)
    return harness.context(model, tmp_path, context=settings)


@pytest.mark.parametrize("again", [False, True])
async def test_a_request_refused_as_too_long_is_compacted_and_retried_once(
    tmp_path: Path, again: bool
) -> None:
    harness = Harness()
    refused = ([], ModelRequestError(TOO_LONG, status=400))
    model = PlayedModel(refused, refused if again else answer("fits now"))
    ctx = overflow_context(harness, model, tmp_path)
    loop_state = LoopState(messages=[*old_rounds(4), UserMessage(content="go")])
    if again:
        with pytest.raises(ContextOverflowError, match="retried once, and was refused again") as e:
            await one_round(ctx, loop_state)
        assert f"too long ({TOO_LONG})" in str(e.value)  # the provider's words
    else:
        assert await one_round(ctx, loop_state) == final("fits now")
        [done] = [r for r in harness.of(RoundCompleted) if not r.compaction]
        assert done.usage == USAGE  # the retry's usage is the round's
    first, retry = model.requests
    assert len(str(retry.messages)) < len(str(first.messages)) / 2  # the retry is compacted
    assert [e.trigger for e in harness.of(ContextCompacted)] == ["overflow"]


async def test_a_refused_request_with_nothing_to_compact_ends_the_run(tmp_path: Path) -> None:
    harness = Harness()
    model = PlayedModel(([], ModelRequestError(TOO_LONG, status=400)))
    ctx = overflow_context(harness, model, tmp_path)
    with pytest.raises(ContextOverflowError, match="nothing left to compact") as e:
        await one_round(ctx, state())
    assert f"too long ({TOO_LONG})" in str(e.value)
    assert len(model.requests) == 1
