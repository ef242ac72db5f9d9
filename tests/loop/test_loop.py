"""The agent loop through a real Engine with the scripted model."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

import culm
from culm.domain.events import RoundCompleted, RunnerProgress
from culm.domain.models import Message
from culm.errors import ToolFailure
from culm.tools.base import Tool, ToolContext
from tests.support import (
    FailingTool,
    RecordingTool,
    RendezvousTool,
    SleepTool,
    collect,
    settings,
    tool_turn,
    types,
)


async def _run(engine: culm.Engine, script: dict[str, Any], tools: list[str]) -> list[Any]:
    engine.scripts.register("t", script)
    run = await engine.run("go", model="scripted:t", tools=tools)
    return await collect(engine.subscribe(run.run_id))


def _calls(*calls: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"tool_call": {"name": name, "arguments": args}} for name, args in calls]


@pytest.mark.parametrize("parties", [2, 3])
async def test_read_only_tools_of_a_round_run_concurrently(tmp_path: Path, parties: int) -> None:
    tool = RendezvousTool(parties=parties)
    async with culm.Engine(settings(tmp_path), tools=[tool]) as engine:
        turn = _calls(*[("rendezvous", {})] * parties)
        events = await _run(engine, {"turns": [turn, [{"text": "ok"}]]}, ["rendezvous"])
    # Sequential execution would leave each call alone at the barrier until it timed out.
    assert types(events).count("tool_complete") == parties
    assert events[-1].type == "complete"


async def test_other_tools_run_one_at_a_time_in_order(tmp_path: Path) -> None:
    tool = RecordingTool()
    async with culm.Engine(settings(tmp_path), tools=[tool]) as engine:
        turn = _calls(*(("record", {"label": str(i)}) for i in range(4)))
        events = await _run(engine, {"turns": [turn, [{"text": "ok"}]]}, ["record"])
    assert tool.log == [f"{step} {i}" for i in range(4) for step in ("enter", "exit")]
    results = [e.result for e in events if e.type == "tool_complete"]
    assert results == ["0", "1", "2", "3"]


async def test_tool_results_reach_the_transcript_in_call_order(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path), tools=[RecordingTool()]) as engine:
        (tmp_path / "ws").mkdir()
        (tmp_path / "ws" / "a.txt").write_text("alpha")
        turn = _calls(("read_file", {"path": "a.txt"}), ("record", {"label": "x"}))
        engine.scripts.register("t", {"turns": [turn, [{"text": "ok"}]]})
        run = await engine.run(
            "go", model="scripted:t", tools=["read_file", "record"], workspace=tmp_path / "ws"
        )
        await engine.wait(run.run_id)
        transcript = await engine.get_messages(run.session_id)
    tool_messages = [m for m in transcript if m.role == "tool"]
    assert [m.tool_name for m in tool_messages] == ["read_file", "record"]
    assert "alpha" in tool_messages[0].content


async def test_a_tool_past_its_timeout_becomes_an_error_result(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path, tool_timeout=0.2), tools=[SleepTool()]) as engine:
        script = {"turns": [tool_turn("sleep", {"seconds": 30}), [{"text": "moving on"}]]}
        events = await _run(engine, script, ["sleep"])
    error = next(e for e in events if e.type == "tool_error")
    assert "timed out after 0.2 s" in error.error
    assert events[-1].type == "complete"
    assert events[-1].final_message == "moving on"


async def test_failing_unknown_and_malformed_calls_are_error_results(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path), tools=[FailingTool()]) as engine:
        turn = [
            {"tool_call": {"name": "explode", "arguments": {}}},
            {"tool_call": {"name": "not_enabled", "arguments": {}}},
            {"tool_call": {"name": "explode", "arguments": "{not json"}},
        ]
        events = await _run(engine, {"turns": [turn, [{"text": "fine"}]]}, ["explode"])
        run = await engine.get_run(events[0].run_id)
        transcript = await engine.get_messages(run.session_id)
    errors = [e.error for e in events if e.type == "tool_error"]
    assert errors[0] == "RuntimeError: kaboom"
    assert errors[1] == "unknown tool 'not_enabled' (enabled tools: explode)"
    assert "must be a JSON object" in errors[2]
    assert events[-1].type == "complete"
    results = [m for m in transcript if m.role == "tool"]
    assert all(m.is_error and m.content.startswith("error: ") for m in results)


class SilentFailure(Tool):
    name: ClassVar[str] = "silent"
    description: ClassVar[str] = "Fails without a message."
    parameters: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        raise ToolFailure("")


class ContextTool(Tool):
    """Records the context it runs with; sends two pieces of output and one run event."""

    name: ClassVar[str] = "context"
    description: ClassVar[str] = "Look around."
    parameters: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.seen: list[ToolContext] = []

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        self.seen.append(ctx)
        ctx.emit_output("one ")
        ctx.emit_output("two")
        assert ctx.emit_event is not None
        ctx.emit_event(RunnerProgress(round_count=99))
        return "done"


@pytest.mark.parametrize(("own", "expected"), [(None, 7.0), (2.5, 2.5)])
async def test_a_tool_runs_with_its_call_run_session_and_timeout(
    tmp_path: Path, own: float | None, expected: float
) -> None:
    tool = ContextTool(own)
    async with culm.Engine(settings(tmp_path, tool_timeout=7.0), tools=[tool]) as engine:
        turn = [{"tool_call": {"id": "call_x", "name": "context", "arguments": {}}}]
        events = await _run(engine, {"turns": [turn, [{"text": "fine"}]]}, ["context"])
    [ctx] = tool.seen
    run = events[0]
    assert (ctx.tool_call_id, ctx.run_id, ctx.session_id) == ("call_x", run.run_id, run.session_id)
    assert ctx.timeout == expected
    tokens = [(e.tool_call_id, e.content) for e in events if e.type == "tool_token"]
    assert tokens == [("call_x", "one "), ("call_x", "two")]
    assert [e.round_count for e in events if e.type == "runner_progress"] == [1, 99, 2]


async def test_a_tool_failure_without_a_message_is_named_by_its_type(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path), tools=[SilentFailure()]) as engine:
        turn = [{"tool_call": {"name": "silent", "arguments": {}}}]
        events = await _run(engine, {"turns": [turn, [{"text": "fine"}]]}, ["silent"])
    assert [e.error for e in events if e.type == "tool_error"] == ["ToolFailure"]


@pytest.mark.parametrize(
    ("enabled", "listed"), [([], "none"), (["silent", "explode"], "explode, silent")]
)
async def test_an_unknown_tools_error_lists_the_enabled_ones(
    tmp_path: Path, enabled: list[str], listed: str
) -> None:
    async with culm.Engine(settings(tmp_path), tools=[FailingTool(), SilentFailure()]) as engine:
        turn = [{"tool_call": {"name": "nope", "arguments": {}}}]
        events = await _run(engine, {"turns": [turn, [{"text": "fine"}]]}, enabled)
    errors = [e.error for e in events if e.type == "tool_error"]
    assert errors == [f"unknown tool 'nope' (enabled tools: {listed})"]


async def test_tool_calls_past_the_round_cap_are_refused(tmp_path: Path) -> None:
    tool = RecordingTool()
    async with culm.Engine(settings(tmp_path, max_tool_calls_per_round=2), tools=[tool]) as engine:
        turn = _calls(*(("record", {"label": str(i)}) for i in range(5)))
        events = await _run(engine, {"turns": [turn, [{"text": "ok"}]]}, ["record"])
    assert len(tool.log) == 4  # two calls ran
    refused = [e for e in events if e.type == "tool_error"]
    assert len(refused) == 3
    assert all("too many tool calls in one round (limit 2)" in e.error for e in refused)
    starts = [e for e in events if e.type == "tool_start"]  # refused ones too, parsed
    assert [e.arguments for e in starts] == [{"label": str(i)} for i in range(5)]
    assert events[-1].type == "complete"


async def test_max_rounds_ends_the_run_with_a_clear_error(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path, max_rounds=3), tools=[RecordingTool()]) as engine:
        script = {"turns": [tool_turn("record", {"label": "again"})], "repeat_last": True}
        events = await _run(engine, script, ["record"])
    assert types(events).count("round_completed") == 3
    assert events[-1].type == "error"
    assert events[-1].code == "limit_exceeded"
    assert "max rounds (3)" in events[-1].message


async def test_transient_model_errors_are_retried(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path, model_retry_base_delay=0.01)) as engine:
        turn = [
            {"error": {"status": 429, "message": "slow down", "retry_after": 0.05}, "times": 1},
            {"error": {"status": 503, "message": "overloaded"}, "times": 2},
            {"text": "made it"},
        ]
        events = await _run(engine, {"turns": [turn]}, [])
    assert events[-1].type == "complete"
    assert events[-1].final_message == "made it"


async def test_transient_errors_give_up_after_three_attempts(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path, model_retry_base_delay=0.01)) as engine:
        turn = [{"error": {"kind": "connection", "message": "reset by peer"}, "times": 3}]
        events = await _run(engine, {"turns": [turn + [{"text": "never"}]]}, [])
    assert events[-1].type == "error"
    assert events[-1].code == "model_connection_error"
    assert "reset by peer" in events[-1].message


async def test_auth_errors_fail_at_once(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path, model_retry_base_delay=0.01)) as engine:
        turn = [{"error": {"status": 401, "message": "invalid x-api-key"}, "times": 1}]
        events = await _run(engine, {"turns": [turn + [{"text": "would succeed on retry"}]]}, [])
    assert events[-1].type == "error"
    assert events[-1].code == "model_auth_error"
    assert "invalid x-api-key" in events[-1].message


async def test_retry_after_longer_than_allowed_fails_instead_of_waiting(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path, model_retry_max_delay=1)) as engine:
        turn = [{"error": {"status": 429, "message": "quota", "retry_after": 3600}, "times": 1}]
        events = await _run(engine, {"turns": [turn + [{"text": "x"}]]}, [])
    assert events[-1].type == "error"
    assert events[-1].code == "model_http_error"


async def test_a_stalled_stream_fails_the_round(tmp_path: Path) -> None:
    overrides = {"stream_idle_timeout": 0.1, "model_retry_base_delay": 0.01}
    async with culm.Engine(settings(tmp_path, **overrides)) as engine:
        events = await _run(engine, {"turns": [[{"delay": 30}, {"text": "late"}]]}, [])
    assert events[-1].type == "error"
    assert events[-1].code == "model_stalled"
    assert "stream_idle_timeout" in events[-1].message


async def test_no_retry_once_output_was_streamed(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path, model_retry_base_delay=0.01)) as engine:
        turn = [{"text": "partial "}, {"error": {"kind": "connection"}, "times": 1}]
        events = await _run(engine, {"turns": [turn + [{"text": "rest"}]]}, [])
    assert [e.content for e in events if e.type == "token"] == ["partial "]
    assert events[-1].type == "error"


async def test_usage_per_round_is_reported_and_summed(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path), tools=[RecordingTool()]) as engine:
        usage_1 = {"prompt_tokens": 100, "completion_tokens": 7, "cache_read_tokens": 40}
        usage_2 = {"prompt_tokens": 130, "completion_tokens": 5, "reasoning_tokens": 2}
        script = {
            "turns": [
                [*tool_turn("record", {"label": "a"}), {"usage": usage_1}],
                [{"text": "done"}, {"usage": usage_2}],
            ]
        }
        events = await _run(engine, script, ["record"])
        run = await engine.get_run(events[0].run_id)
    rounds = [e for e in events if isinstance(e, RoundCompleted)]
    assert [r.usage.prompt_tokens for r in rounds] == [100, 130]
    assert [r.round for r in rounds] == [1, 2]
    assert rounds[0].model == "scripted:t"
    total = events[-1].usage
    assert total == culm.Usage(
        prompt_tokens=230,
        completion_tokens=12,
        total_tokens=242,
        cache_read_tokens=40,
        reasoning_tokens=2,
    )
    assert run.usage == total
    budgets = [e for e in events if e.type == "token_budget_updated"]
    reported = [b.usage.prompt_tokens for b in budgets if not b.usage.estimated]
    assert reported == [100, 130]  # after each call; before it, an estimate


async def test_the_user_message_starts_the_transcript_once(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path)) as engine:
        session = await engine.create_session(model="scripted:echo", system_prompt="be brief")
        for text in ("one", "two"):
            run = await engine.start_run(session.session_id, text)
            await engine.wait(run.run_id)
        transcript = await engine.get_messages(session.session_id)
    assert [(m.role, m.content) for m in transcript] == [
        ("user", "one"),
        ("assistant", "You said: one"),
        ("user", "two"),
        ("assistant", "You said: two"),
    ]


async def test_each_round_stores_its_messages_in_one_write(tmp_path: Path) -> None:
    writes: list[list[str]] = []
    async with culm.Engine(settings(tmp_path), tools=[RecordingTool()]) as engine:
        append = engine.store.append_messages

        async def recording(
            session_id: str,
            items: Sequence[Message],
            *,
            run_id: str | None,
            fence: tuple[str, int] | None = None,
        ) -> None:
            writes.append([m.role for m in items])
            await append(session_id, items, run_id=run_id, fence=fence)

        engine.store.append_messages = recording  # type: ignore[method-assign]
        script = {"turns": [tool_turn("record", {"label": "a"}), [{"text": "done"}]]}
        events = await _run(engine, script, ["record"])
        transcript = await engine.get_messages(events[0].session_id)
    # The user message is stored with the run's start, each round's messages in one write,
    # the final answer with the run's end (its terminal event and status: the event writer's).
    assert writes == [["assistant", "tool"]]
    assert [m.role for m in transcript] == ["user", "assistant", "tool", "assistant"]


def test_tool_start_carries_parsed_arguments() -> None:
    from culm.loop.execute import parse_arguments

    assert parse_arguments(json.dumps({"a": 1})) == {"a": 1}
    assert parse_arguments("{oops") == "{oops"
    assert parse_arguments("") == {}


@pytest.mark.parametrize("bad", ["1", "[1, 2]", '"text"'])
async def test_non_object_arguments_are_refused(tmp_path: Path, bad: str) -> None:
    async with culm.Engine(settings(tmp_path), tools=[RecordingTool()]) as engine:
        turn = [{"tool_call": {"name": "record", "arguments": bad}}]
        events = await _run(engine, {"turns": [turn, [{"text": "ok"}]]}, ["record"])
    assert "must be a JSON object" in next(e for e in events if e.type == "tool_error").error


@pytest.mark.parametrize(("limit", "bound"), [(10, 40), (None, None)])
async def test_a_model_faster_than_the_store_waits_for_it(
    tmp_path: Path, limit: int | None, bound: int | None
) -> None:
    """Three runs burst 300 tokens each at once. With flow control the events waiting for
    storage stay near the limit (each run may add a few between two checks); without it (the
    limit above the burst) they pile up. Either way every event arrives, once, in order."""
    overrides = {"event_backlog_limit": limit} if limit else {"event_backlog_limit": 10_000}
    async with culm.Engine(settings(tmp_path, **overrides)) as engine:
        engine.scripts.register("burst", {"turns": [[{"text": "x" * 300, "chunk_size": 1}]]})
        most = 0
        add = engine.batcher.add

        def counting_add(*args: Any, **kwargs: Any) -> None:
            nonlocal most
            add(*args, **kwargs)
            most = max(most, engine.batcher.backlog)

        engine.batcher.add = counting_add  # type: ignore[method-assign]
        runs = [await engine.run("go", model="scripted:burst") for _ in range(3)]
        for run in runs:
            events = await collect(engine.subscribe(run.run_id))
            assert [event.seq for event in events] == list(range(1, len(events) + 1))
            assert types(events).count("token") == 300
    if bound is not None:
        assert most <= bound
    else:
        assert most > 300  # the bursts piled up: the bound above is flow control's doing


async def test_the_budget_event_carries_the_rounds_usage_the_context_and_the_limit(
    tmp_path: Path,
) -> None:
    async with culm.Engine(settings(tmp_path)) as engine:
        steps = [{"reasoning": "h"}, {"reasoning": "m"}, {"text": "ok"}]
        usage = {"usage": {"prompt_tokens": 10, "completion_tokens": 3}}
        engine.scripts.register("b", {"turns": [[*steps, usage]], "max_context_tokens": 5000})
        run = await engine.run("go", model="scripted:b", metadata={"budget_limit": 900})
        events = await collect(engine.subscribe(run.run_id))
        messages = await engine.get_messages(run.session_id)
    before, budget = [e for e in events if e.type == "token_budget_updated"]
    assert before.usage.estimated and before.usage.max_context_tokens == 5000
    assert budget.usage.model_dump() == {
        "prompt_tokens": 10,
        "completion_tokens": 3,
        "total_tokens": 13,
        "max_context_tokens": 5000,
        "budget_limit": 900,
        "percent": 0.2,
        "estimated": False,
    }
    [done] = [e for e in events if e.type == "round_completed"]
    assert (done.partial, done.error, done.usage.total_tokens) == (False, None, 13)
    assert done.latency_ms < 60_000  # time since the round began, not a clock reading
    assert [e.content for e in events if e.type == "reasoning_token"] == ["h", "m"]
    assert messages[-1].reasoning == "hm"
