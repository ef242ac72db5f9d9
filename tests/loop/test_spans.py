"""The loop's spans, read from an in-memory exporter: a model call's ``chat`` span (what was
sent, what came back, the usage as reported, also by a call that failed) and a tool call's
``execute_tool`` span."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from culm.domain.models import ToolCall, Usage, UserMessage
from culm.errors import ModelRequestError
from culm.loop.execute import run_tool_calls
from culm.loop.model_call import call_model
from culm.providers.base import Finish, ModelRequest, TextDelta, UsageReport
from culm.tracing.spans import RunTracing
from tests.loop.fakes import Harness, PlayedModel
from tests.support import FailingTool, RecordingTool

USAGE = Usage(prompt_tokens=3, completion_tokens=1, total_tokens=4, cache_read_tokens=2)
REQUEST = ModelRequest(system_prompt="be brief", messages=[UserMessage(content="hi")])


@pytest.fixture
def memory() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    yield memory
    memory.shutdown()


def tracing(memory: InMemorySpanExporter) -> RunTracing:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return RunTracing(provider.get_tracer("test"), capture_content=True)


def usage_of(span: ReadableSpan) -> list[object]:
    attributes = span.attributes or {}
    return [attributes.get(f"gen_ai.usage.{key}") for key in ("input_tokens", "output_tokens")]


async def test_a_chat_span_has_the_request_the_answer_and_the_usage(
    tmp_path: Path, memory: InMemorySpanExporter
) -> None:
    parts = [TextDelta(text="ok"), UsageReport(usage=USAGE, model="m-1"), Finish(reason="stop")]
    model = PlayedModel((parts, None))
    ctx = Harness().context(model, tmp_path, tracing=tracing(memory))
    await call_model(ctx, REQUEST)
    [span] = memory.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert (span.name, attributes["gen_ai.request.model"]) == ("chat played", "played")
    assert json.loads(str(attributes["gen_ai.system_instructions"])) == [
        {"type": "text", "content": "be brief"}
    ]
    assert json.loads(str(attributes["gen_ai.input.messages"])) == [
        {"role": "user", "parts": [{"type": "text", "content": "hi"}]}
    ]
    assert json.loads(str(attributes["gen_ai.output.messages"])) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "ok"}], "finish_reason": "stop"}
    ]
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes["gen_ai.response.model"] == "m-1"
    assert usage_of(span) == [3, 1]
    assert attributes["gen_ai.usage.cache_read.input_tokens"] == 2


async def test_a_failed_chat_span_has_the_usage_reported_before_the_failure(
    tmp_path: Path, memory: InMemorySpanExporter
) -> None:
    model = PlayedModel(([UsageReport(usage=USAGE)], ModelRequestError("no", status=400)))
    ctx = Harness().context(model, tmp_path, tracing=tracing(memory))
    with pytest.raises(ModelRequestError):
        await call_model(ctx, REQUEST, model=model)
    [span] = memory.get_finished_spans()
    assert usage_of(span) == [3, 1]
    assert span.status.status_code is StatusCode.ERROR


async def test_tool_spans_carry_the_result_and_a_failure(
    tmp_path: Path, memory: InMemorySpanExporter
) -> None:
    tools = [FailingTool(), RecordingTool()]
    ctx = Harness().context(PlayedModel(), tmp_path, tools=tools, tracing=tracing(memory))
    calls = [
        ToolCall(id="a", name="explode", arguments="{}"),
        ToolCall(id="b", name="record", arguments='{"label": "x"}'),
    ]
    await run_tool_calls(ctx, calls)
    failed, done = memory.get_finished_spans()
    assert failed.name == "execute_tool explode"
    assert dict(failed.attributes or {}) == {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "explode",
        "gen_ai.tool.call.id": "a",
        "gen_ai.tool.call.arguments": "{}",
        "gen_ai.tool.call.result": "error: RuntimeError: kaboom",
        "error.type": "tool_error",
    }
    assert (failed.status.status_code, failed.status.description) == (
        StatusCode.ERROR,
        "error: RuntimeError: kaboom",
    )
    assert done.name == "execute_tool record"
    assert (done.attributes or {})["gen_ai.tool.call.result"] == "x"
    assert (done.attributes or {})["gen_ai.tool.call.arguments"] == '{"label": "x"}'
    assert done.status.status_code is StatusCode.UNSET
