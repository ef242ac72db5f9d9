"""culm's span encoder writes the bytes the SDK's OTLP encoder writes, for the spans culm makes
and for the ones it hands back to the SDK's encoder (events, links, other attribute types)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from culm.tracing import build_tracing
from culm.tracing.encode import SpanEncoder
from culm.tracing.otlp import OTLPExporter
from culm.tracing.spans import RunTracing, context_from


def _provider(service: str) -> tuple[TracerProvider, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory


@pytest.fixture
def spans() -> Iterator[list[ReadableSpan]]:
    provider, memory = _provider("culm")
    other, other_memory = _provider("other")
    tracer = provider.get_tracer("culm", "1.0", schema_url="https://example.com/schema")
    tracing = RunTracing(tracer)
    with tracing.agent():
        with tracing.chat("openai:gpt-x") as chat:
            chat.chunk()
            chat.answered("stop", "gpt-x-2025")
        with pytest.raises(ValueError), tracing.tool("read", "call_1", "{}"):
            raise ValueError("no such file")
    caller = context_from("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    attributes = {
        "s": "é ü",
        "empty": "",
        "yes": True,
        "no": False,
        "zero": 0,
        "negative": -5,
        "big": 2**62,
        "float": 1.5,
        "strings": ("a", "b"),
        "ints": [1, -2],
        "bools": (True,),
    }
    with tracer.start_as_current_span("typed", context=caller, kind=SpanKind.SERVER) as span:
        span.set_attributes(attributes)
        span.set_status(Status(StatusCode.OK))
        with tracer.start_as_current_span("with an event") as child:
            child.add_event("happened", {"n": 1})
    with tracer.start_as_current_span("linked", links=[Link(span.get_span_context())]):
        pass
    with provider.get_tracer("second scope").start_as_current_span("same resource"):
        pass
    with other.get_tracer("elsewhere").start_as_current_span("other resource"):
        pass
    with tracer.start_as_current_span("first scope again"):
        pass
    yield [*memory.get_finished_spans(), *other_memory.get_finished_spans()]


def test_the_encoding_is_the_sdks_byte_for_byte(spans: list[ReadableSpan]) -> None:
    assert len(spans) == 9
    encoder = SpanEncoder()
    expected = encode_spans(spans).SerializePartialToString()
    assert encoder.encode(spans) == expected
    assert encoder.encode(spans) == expected  # again, from what it keeps
    assert encoder.encode(spans[:1]) == encode_spans(spans[:1]).SerializePartialToString()
    assert encoder.encode([]) == encode_spans([]).SerializePartialToString()


@pytest.mark.parametrize("light", [True, False])
def test_exporting_uses_culms_encoder(monkeypatch: pytest.MonkeyPatch, light: bool) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    tracing = build_tracing(light=light)
    try:
        if light:  # culm's own spans and batch export
            exporter = tracing.provider.exporter
        else:
            processor = tracing.provider._active_span_processor._span_processors[0]
            exporter = processor._batch_processor._exporter
        assert isinstance(exporter, OTLPExporter)
        assert exporter.fast  # the SDK's attributes it relies on are there
    finally:
        tracing.provider.shutdown()
