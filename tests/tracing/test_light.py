"""culm's own spans and batch export (the path culm takes when it configures export itself),
decoded by the in-process OTLP receiver: the settings the SDK honoured (sampler, resource,
headers, compression, endpoints, batch limits), dropping when the queue is full, sending on
close, and the SDK's path for what culm's does not handle."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)

from culm.tracing import RunTracing, Tracing, build_tracing, current_traceparent
from culm.tracing.batch import BatchExport
from culm.tracing.light import SAMPLERS, LightSpan, sampler_from
from culm.tracing.spans import NEW_TRACE_ID, context_from
from tests.tracing.receiver import OTLPReceiver, ReceivedSpan

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SAMPLED_CALLER = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OTLPReceiver]:
    for name in ("OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"):
        monkeypatch.delenv(name, raising=False)
    with OTLPReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        yield receiver


def _light() -> Tracing:
    tracing = build_tracing()
    assert isinstance(tracing.provider, BatchExport)  # culm's own path
    return tracing


def _a_run(tracing: Tracing, traceparent: str | None = None) -> str | None:
    """An agent span with a chat and a tool span below; the traceparent seen inside."""
    run = RunTracing(tracing.tracer)
    with run.agent():
        with run.chat("openai:gpt-x") as chat:
            chat.chunk()
            chat.answered("stop", "gpt-x-1")
        with run.tool("list_dir", "call_1", "{}"):
            return current_traceparent()


def _wait_for(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, "not within 10 s"
        time.sleep(0.01)


async def test_the_resource_headers_compression_and_traces_endpoint_are_honoured(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # not this one:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{receiver.endpoint}/v1/traces")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "culm-light")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=ci,team=agents")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-general=1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-traces=2,x-other=3")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    tracing = _light()
    _a_run(tracing)
    await tracing.aclose()
    names = sorted(span.name for span in receiver.spans)
    assert names == ["chat gpt-x", "execute_tool list_dir", "invoke_agent"]
    for span in receiver.spans:
        assert span.resource["service.name"] == "culm-light"
        assert span.resource["deployment.environment"] == "ci"
        assert span.resource["team"] == "agents"
    (headers,) = receiver.headers
    assert (headers["x-traces"], headers["x-other"]) == ("2", "3")
    assert "x-general" not in headers  # the traces-specific headers replace the general ones
    assert headers["content-encoding"] == "gzip"


def _tree(spans: Sequence[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {span.name.split()[0]: span for span in spans}


async def test_spans_keep_their_parents_and_carry_what_was_set(receiver: OTLPReceiver) -> None:
    tracing = _light()
    traceparent = _a_run(tracing)
    tracer = tracing.tracer
    with pytest.raises(ValueError), tracer.start_as_current_span("failing") as failing:
        failing.set_attributes({f"a{i}": i for i in range(130)})  # 2 over the limit
        failing.set_attribute("tags", ["x", "y"])
        raise ValueError("boom")
    with tracer.start_as_current_span("ok") as ok:
        ok.set_status(Status(StatusCode.OK))
        ok.set_status(StatusCode.ERROR, "ignored: OK is final")
    ok.set_attribute("late", 1)  # ended: ignored
    await tracing.aclose()
    spans = _tree(receiver.spans)
    agent, chat, tool = spans["invoke_agent"], spans["chat"], spans["execute_tool"]
    assert chat.parent_span_id == tool.parent_span_id == agent.span_id
    assert traceparent == f"00-{tool.trace_id}-{tool.span_id}-01"  # what the bash tool sends
    assert chat.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert chat.attributes["gen_ai.response.model"] == "gpt-x-1"
    assert chat.kind == 3  # CLIENT
    failed = spans["failing"]
    assert failed.status_code == 2
    assert failed.events == ("exception",)
    assert failed.attributes["tags"] == ["x", "y"]
    assert "a0" not in failed.attributes and "a1" not in failed.attributes  # the oldest
    assert len(failed.attributes) == 128
    assert failed.dropped_attributes == 3  # a0, a1, then a2 for "tags"
    assert spans["ok"].status_code == 1
    assert "late" not in spans["ok"].attributes


def _sdk_sampler(name: str, rate: float) -> Sampler:
    root = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(rate),
    }[name.removeprefix("parentbased_")]
    return ParentBased(root) if name.startswith("parentbased_") else root


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_each_sampler_decides_as_the_sdks(name: str) -> None:
    rng = random.Random(20)
    sampler = sampler_from(name.upper(), "0.3")
    assert sampler is not None
    sdk = _sdk_sampler(name, 0.3)
    for _ in range(300):
        trace_id = rng.getrandbits(128)
        parent = rng.choice([None, True, False])
        context = None
        parent_context = None
        if parent is not None:
            flags = TraceFlags(TraceFlags.SAMPLED if parent else TraceFlags.DEFAULT)
            parent_context = SpanContext(trace_id, 7, is_remote=True, trace_flags=flags)
            context = set_span_in_context(NonRecordingSpan(parent_context))
        expected = sdk.should_sample(context, trace_id, "span").decision.is_sampled()
        assert sampler(parent_context, trace_id) == expected, (trace_id, parent)


def test_a_ratio_samples_that_share_of_the_runs_that_start_a_trace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    tracing = build_tracing()
    rng = random.Random(20)
    sampled = 0
    try:
        for _ in range(2000):  # run ids are UUID4s: their lower 64 bits start with 0b10
            run_id = uuid.UUID(int=rng.getrandbits(128), version=4).int
            token = NEW_TRACE_ID.set(run_id)
            try:
                span = tracing.tracer.start_span("invoke_agent")
            finally:
                NEW_TRACE_ID.reset(token)
            assert span.get_span_context().trace_id == run_id
            sampled += span.get_span_context().trace_flags.sampled
    finally:
        tracing.provider.shutdown()
    assert 0.2 < sampled / 2000 < 0.3, sampled


def test_an_unknown_sampler_or_a_span_limit_takes_the_sdks_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    assert sampler_from("parentbased_jaeger_remote", None) is None
    for name, value in [
        ("OTEL_TRACES_SAMPLER", "parentbased_jaeger_remote"),
        ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "2"),
    ]:
        with monkeypatch.context() as patch:
            patch.setenv(name, value)
            tracing = build_tracing()
            assert isinstance(tracing.provider, TracerProvider), name
            tracing.provider.shutdown()


async def test_a_span_limit_is_applied_on_the_sdks_path(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "2")
    tracing = build_tracing()
    with tracing.tracer.start_as_current_span("limited", attributes={"a": 1, "b": 2, "c": 3}):
        pass
    await tracing.aclose()
    (span,) = receiver.spans
    assert (span.attributes, span.dropped_attributes) == ({"b": 2, "c": 3}, 1)


async def test_sampled_out_spans_are_not_exported_but_their_context_propagates(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    tracing = _light()
    traceparent = _a_run(tracing)
    assert traceparent is not None and traceparent.endswith("-00")  # not sampled, still sent
    # parentbased: a sampled caller's trace is followed whatever the ratio
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    followed = _light()
    _a_run(followed)  # a new trace: ratio 0, not sampled
    with followed.tracer.start_as_current_span("child", context=context_from(SAMPLED_CALLER)):
        pass
    await tracing.aclose()
    await followed.aclose()
    assert [span.name for span in receiver.spans] == ["child"]
    assert receiver.spans[0].trace_id == CALLER_TRACE


class _Gated:
    """An exporter that holds its first export until ``gate`` is set."""

    def __init__(self, exporter: Any) -> None:
        self.exporter = exporter
        self.gate = threading.Event()
        self.exporting = threading.Event()
        self.batches: list[int] = []

    def export(self, spans: Sequence[Any]) -> Any:
        self.exporting.set()
        assert self.gate.wait(10)
        self.batches.append(len(spans))
        return self.exporter.export(spans)

    def shutdown(self) -> None:
        self.exporter.shutdown()


async def test_a_full_queue_drops_spans_without_blocking_and_close_sends_the_rest(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "4")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    tracing = _light()
    batch = tracing.provider
    assert isinstance(batch, BatchExport)
    gated = batch.exporter = _Gated(batch.exporter)
    tracer = tracing.tracer
    for index in range(2):  # a full batch wakes the thread, whose export waits at the gate
        tracer.start_span(f"first {index}").end()
    assert gated.exporting.wait(10)
    for index in range(6):  # 4 fit in the queue, 2 are dropped: ending never waits
        tracer.start_span(f"then {index}").end()
    assert batch.dropped == 2
    gated.gate.set()
    await tracing.aclose()
    tracer.start_span("after close").end()
    assert batch.dropped == 3
    names = sorted(span.name for span in receiver.spans)
    assert names == ["first 0", "first 1"] + [f"then {index}" for index in range(4)]
    assert gated.batches == [2, 2, 2]


async def test_spans_are_sent_by_the_thread_per_full_batch_and_per_schedule_delay(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "3")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    full = _light()
    for index in range(3):
        full.tracer.start_span(f"full {index}").end()
    _wait_for(lambda: len(receiver.spans) == 3)  # no flush: the full batch woke the thread
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
    timed = _light()
    timed.tracer.start_span("timed").end()
    _wait_for(lambda: len(receiver.spans) == 4)  # one span, after the delay
    assert receiver.requests == 2
    await full.aclose()
    await timed.aclose()
    assert receiver.requests == 2  # nothing left to send


def test_a_light_span_is_the_apis_span() -> None:
    tracing = build_tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    try:
        span = tracing.tracer.start_span("x")
        assert isinstance(span, LightSpan) and span.is_recording()
        span.end()
        assert not span.is_recording()
    finally:
        tracing.provider.shutdown()
