"""What culm exports over OTLP/HTTP, decoded by an in-process receiver: the span tree of a run
with tools and a sub-agent, its attributes, and usage exactly as the model reported it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import culm
from tests.support import collect, settings
from tests.tracing.receiver import OTLPReceiver, ReceivedSpan

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "culm-test")
        monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
        monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
        yield receiver


def _call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"tool_call": {"name": name, "arguments": arguments}}


def _usage(prompt: int, completion: int, cache_read: int = 0) -> dict[str, Any]:
    return {
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cache_read_tokens": cache_read,
        }
    }


def _one(spans: list[ReceivedSpan]) -> ReceivedSpan:
    assert len(spans) == 1, [span.name for span in spans]
    return spans[0]


def _children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[str]:
    return sorted(span.name for span in spans if span.parent_span_id == parent.span_id)


async def test_a_run_with_tools_and_a_sub_agent_exports_its_span_tree(
    receiver: OTLPReceiver, tmp_path: Path
) -> None:
    engine = culm.Engine(settings(tmp_path))
    async with engine:
        engine.scripts.register("child", {"turns": [[{"text": "found it"}, _usage(7, 3)]]})
        first = [
            _call("list_dir", path="."),
            _call("spawn_agent", task="look", model="scripted:child"),
            _usage(100, 10, cache_read=40),
        ]
        engine.scripts.register("parent", {"turns": [first, [{"text": "done"}, _usage(150, 5)]]})
        run = await engine.run("go", model="scripted:parent", tools=["list_dir", "spawn_agent"])
        events = await collect(engine.subscribe(run.run_id))
        assert events[-1].type == "complete"
        (child,) = await engine.get_children(run.run_id)
    spans = receiver.spans  # the engine's close sent everything

    agents = receiver.named("invoke_agent")
    root = _one([s for s in agents if s.parent_span_id == ""])
    # A run that starts a trace gives it its id: the TRACEPARENT its tools send names the run.
    assert root.trace_id == uuid.UUID(run.run_id).hex
    assert {span.trace_id for span in spans} == {root.trace_id}
    assert root.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert root.attributes["gen_ai.conversation.id"] == run.session_id
    assert root.attributes["culm.run.id"] == run.run_id
    assert root.attributes["culm.run.trigger"] == "api"
    assert root.attributes["culm.run.attempt"] == 1
    assert root.attributes["culm.run.status"] == "completed"
    assert root.resource["service.name"] == "culm-test"
    assert _children(spans, root) == [
        "chat parent",
        "chat parent",
        "execute_tool list_dir",
        "execute_tool spawn_agent",
    ]

    chats = [s for s in spans if s.parent_span_id == root.span_id and s.name == "chat parent"]
    usages = sorted(
        (
            c.attributes["gen_ai.usage.input_tokens"],
            c.attributes["gen_ai.usage.output_tokens"],
            c.attributes["gen_ai.usage.cache_read.input_tokens"],
        )
        for c in chats
    )
    assert usages == [(100, 10, 40), (150, 5, 0)]  # as the model reported them
    for chat in chats:
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.attributes["gen_ai.provider.name"] == "scripted"
        assert chat.attributes["gen_ai.request.model"] == "parent"
        assert chat.attributes["gen_ai.response.finish_reasons"] in (["tool_calls"], ["stop"])
        assert chat.attributes["gen_ai.response.time_to_first_chunk"] >= 0
        assert "gen_ai.input.messages" not in chat.attributes  # no content unless asked

    tool = _one(receiver.named("execute_tool list_dir"))
    assert tool.attributes["gen_ai.tool.name"] == "list_dir"
    assert tool.attributes["gen_ai.tool.call.id"]
    assert "gen_ai.tool.call.arguments" not in tool.attributes
    assert "error.type" not in tool.attributes

    # The sub-agent's run is a child of the tool call that spawned it.
    spawn = _one(receiver.named("execute_tool spawn_agent"))
    child_agent = _one([s for s in agents if s.parent_span_id == spawn.span_id])
    assert child_agent.attributes["culm.run.id"] == child.run_id
    assert child_agent.attributes["culm.run.trigger"] == "spawn"
    assert child_agent.attributes["culm.run.parent_id"] == run.run_id
    child_chat = _one([s for s in spans if s.parent_span_id == child_agent.span_id])
    assert child_chat.name == "chat child"
    assert child_chat.attributes["gen_ai.usage.input_tokens"] == 7
    assert child_chat.attributes["gen_ai.usage.output_tokens"] == 3
    assert len(spans) == 7


async def test_a_run_continues_the_callers_trace_and_failures_carry_error_type(
    receiver: OTLPReceiver, tmp_path: Path
) -> None:
    engine = culm.Engine(settings(tmp_path, max_rounds=1))
    async with engine:
        engine.scripts.register(
            "loop", {"turns": [[_call("read_file", path="missing.txt")], [{"text": "x"}]]}
        )
        session = await engine.create_session(model="scripted:loop", tools=["read_file"])
        run = await engine.start_run(session.session_id, "go", traceparent=CALLER)
        ended = await engine.wait(run.run_id, timeout=20)
        assert ended.status is culm.RunStatus.ERROR  # max rounds
    agent = _one(receiver.named("invoke_agent"))
    assert (agent.trace_id, agent.parent_span_id) == (CALLER_TRACE, CALLER_SPAN)
    assert agent.attributes["culm.run.status"] == "error"
    assert agent.attributes["error.type"] == "limit_exceeded"
    assert agent.status_code == 2
    tool = _one(receiver.named("execute_tool read_file"))
    assert tool.attributes["error.type"] == "tool_error"
    assert tool.status_code == 2


async def test_without_an_exporter_the_tracer_is_the_no_op_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    engine = culm.Engine(settings(tmp_path))
    assert not engine.tracing.exporting
    async with engine:
        run = await engine.run("hi", model="scripted:demo")
        assert (await engine.wait(run.run_id, timeout=20)).status is culm.RunStatus.COMPLETED


async def _run_with_a_tool(tmp_path: Path) -> tuple[culm.Run, list[Any]]:
    engine = culm.Engine(settings(tmp_path))
    async with engine:
        first = [{"text": "let me look"}, _call("list_dir", path=".")]
        engine.scripts.register("demo", {"turns": [first, [{"text": "done"}]]})
        run = await engine.run(
            "list it", model="scripted:demo", tools=["list_dir"], system_prompt="be brief"
        )
        events = await collect(engine.subscribe(run.run_id))
        assert events[-1].type == "complete"
    return run, events


async def test_with_content_capture_on_spans_carry_the_messages_and_tool_io(
    receiver: OTLPReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "True")
    _, events = await _run_with_a_tool(tmp_path)
    (start,) = [e for e in events if e.type == "tool_start"]
    (done,) = [e for e in events if e.type == "tool_complete"]
    call = {"type": "tool_call", "id": start.tool_call_id, "name": "list_dir"}
    call["arguments"] = {"path": "."}
    user = {"role": "user", "parts": [{"type": "text", "content": "list it"}]}
    asked = {"role": "assistant", "parts": [{"type": "text", "content": "let me look"}, call]}
    answer = {"type": "tool_call_response", "id": start.tool_call_id, "response": done.result}

    first, second = sorted(receiver.named("chat demo"), key=lambda span: span.start_time)
    for chat in (first, second):
        instructions = json.loads(chat.attributes["gen_ai.system_instructions"])
        assert instructions == [{"type": "text", "content": "be brief"}]
    assert json.loads(first.attributes["gen_ai.input.messages"]) == [user]
    assert json.loads(first.attributes["gen_ai.output.messages"]) == [
        {**asked, "finish_reason": "tool_call"}
    ]
    assert json.loads(second.attributes["gen_ai.input.messages"]) == [
        user,
        asked,
        {"role": "tool", "parts": [answer]},
    ]
    assert json.loads(second.attributes["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "done"}],
            "finish_reason": "stop",
        }
    ]

    tool = _one(receiver.named("execute_tool list_dir"))
    assert json.loads(tool.attributes["gen_ai.tool.call.arguments"]) == start.arguments
    assert tool.attributes["gen_ai.tool.call.result"] == done.result
    assert done.result  # the listing, not an empty string


@pytest.mark.parametrize("setting", [None, "false", "1"])
async def test_without_content_capture_no_content_is_recorded(
    receiver: OTLPReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str | None
) -> None:
    if setting is not None:
        monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", setting)
    await _run_with_a_tool(tmp_path)
    content = {
        "gen_ai.system_instructions",
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.tool.call.arguments",
        "gen_ai.tool.call.result",
    }
    spans = receiver.spans
    assert {span.name for span in spans} >= {"chat demo", "execute_tool list_dir"}
    for span in spans:
        assert not content & span.attributes.keys(), span.name
