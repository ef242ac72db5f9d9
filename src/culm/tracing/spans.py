"""The spans of a run, named and attributed as the OpenTelemetry GenAI conventions say.

- ``invoke_agent [name]`` per run (attempt): ``gen_ai.operation.name``, ``gen_ai.agent.name``,
  ``gen_ai.conversation.id`` (the session), ``culm.run.*`` (id, trigger, attempt, status);
  its parent is the run's ``traceparent`` (the API caller's, or the spawning tool call's).
- ``chat {model}`` per model call: provider, request and response model, usage as reported
  (input, output, cache read/write, reasoning), finish reasons, time to first chunk.
- ``execute_tool {name}`` per tool call: tool name, call id, ``error.type`` on failure.

Content (messages, tool arguments and results) is recorded only when capture is asked for
(:mod:`culm.tracing.content`).
Every span is made through the tracer the engine holds: the no-op tracer makes them free.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, Generic, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from culm.domain.models import AssistantMessage, Message, Run, Session, Usage
from culm.tracing import content

_PROPAGATOR = TraceContextTextMapPropagator()
_NOOP = trace.NoOpTracer()

# The trace id a new trace takes (culm.tracing.setup's id generator reads it): a run that
# starts a trace gives it its own id, so the trace-id of the ``TRACEPARENT`` its tools send is
# the run id, as without export (culm.domain.trace), and the proxy links their calls to it.
NEW_TRACE_ID: ContextVar[int | None] = ContextVar("culm_new_trace_id", default=None)

T = TypeVar("T")

OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, or None when there is none (no-op)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def context_from(traceparent: str | None) -> otel_context.Context | None:
    """The context a ``traceparent`` header continues (None: a new trace)."""
    if not traceparent:
        return None
    return _PROPAGATOR.extract({"traceparent": traceparent})


def usage_attributes(usage: Usage) -> dict[str, int]:
    return {
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens,
        "gen_ai.usage.cache_read.input_tokens": usage.cache_read_tokens,
        "gen_ai.usage.cache_creation.input_tokens": usage.cache_write_tokens,
        "gen_ai.usage.reasoning.output_tokens": usage.reasoning_tokens,
    }


def provider_of(model: str) -> tuple[str, str]:
    """``provider:model`` → (provider, model)."""
    provider, sep, name = model.partition(":")
    return (provider, name) if sep else ("unknown", model)


class ChatSpan:
    """Records one model call on its span."""

    __slots__ = ("_capture", "_first", "_span", "_started")

    def __init__(self, span: Span, *, capture_content: bool = False) -> None:
        self._span = span
        self._capture = capture_content and span.is_recording()
        self._started = time.monotonic()
        self._first: float | None = None

    def chunk(self) -> None:
        """A chunk of the answer arrived (the first one sets the time to first chunk)."""
        if self._first is None:
            self._first = time.monotonic()
            self._span.set_attribute(
                "gen_ai.response.time_to_first_chunk", self._first - self._started
            )

    @property
    def first_chunk_ms(self) -> int | None:
        if self._first is None:
            return None
        return int((self._first - self._started) * 1000)

    def usage(self, usage: Usage) -> None:
        if self._span.is_recording():
            self._span.set_attributes(usage_attributes(usage))

    def request(self, system_prompt: str | None, messages: Sequence[Message]) -> None:
        """What is sent: recorded only when content capture is on (else not serialized)."""
        if self._capture:
            self._span.set_attributes(content.request_attributes(system_prompt, messages))

    def answered(
        self,
        finish_reason: str | None,
        model: str | None,
        message: AssistantMessage | None = None,
    ) -> None:
        span = self._span
        if not span.is_recording():
            return
        if finish_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [finish_reason])
        if model:
            span.set_attribute("gen_ai.response.model", model)
        if self._capture and message is not None:
            span.set_attribute(
                content.OUTPUT_MESSAGES, content.output_messages(message, finish_reason)
            )


class _Current(Generic[T]):
    """``span`` current inside a ``with`` block (which gets ``value``), ended when it leaves;
    an exception leaving the block marks the span failed (``run_status``: and sets
    ``culm.run.status``, ``completed`` when none does).

    A class, not a generator context manager: it is entered on every model and tool call, and
    the SDK's ``start_as_current_span`` nests three generator managers per span. A span with
    no valid context (the no-op tracer's) is never made current: there is nothing to see."""

    __slots__ = ("_run_status", "_span", "_token", "_value")

    def __init__(self, span: Span, value: T, *, run_status: bool = False) -> None:
        self._span = span
        self._value = value
        self._run_status = run_status
        self._token: Token[otel_context.Context] | None = None

    def __enter__(self) -> T:
        if self._span.get_span_context().is_valid:
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._value

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        span = self._span
        try:
            if exc is not None:
                _failed(span, exc, run_status=self._run_status)
            elif self._run_status:
                span.set_attribute("culm.run.status", "completed")
        finally:
            if self._token is not None:
                otel_context.detach(self._token)
            span.end()


class RunTracing:
    """The spans of one run, made by ``tracer``."""

    def __init__(
        self,
        tracer: trace.Tracer = _NOOP,
        *,
        run: Run | None = None,
        session: Session | None = None,
        agent_name: str | None = None,
        capture_content: bool = False,
    ) -> None:
        self.tracer = tracer
        self.capture_content = capture_content
        self._run = run
        self._session = session
        self._agent = agent_name

    def agent(self) -> _Current[Span]:
        """The run's ``invoke_agent`` span, current inside the block; its status is the run's
        (an exception: ``error``, with ``error.type``; a cancel: ``cancelled``)."""
        run, name = self._run, self._agent
        attributes: dict[str, Any] = {OPERATION: "invoke_agent"}
        if name:
            attributes["gen_ai.agent.name"] = name
        if self._session is not None:
            attributes["gen_ai.conversation.id"] = self._session.session_id
        if run is not None:
            attributes.update(_run_attributes(run))
        parent = context_from(run.traceparent) if run is not None else None
        span_name = f"invoke_agent {name}" if name else "invoke_agent"
        # A run without a parent starts a trace of its own (an empty context: never below
        # whatever span happens to be current), whose id is the run id.
        token = NEW_TRACE_ID.set(_trace_id(run) if parent is None else None)
        try:
            span = self.tracer.start_span(
                span_name,
                context=parent or otel_context.Context(),
                kind=SpanKind.INTERNAL,
                attributes=attributes,
            )
        finally:
            NEW_TRACE_ID.reset(token)
        return _Current(span, span, run_status=True)

    def chat(self, model: str) -> _Current[ChatSpan]:
        provider, name = provider_of(model)
        attributes = {OPERATION: "chat", PROVIDER: provider, "gen_ai.request.model": name}
        span = self.tracer.start_span(f"chat {name}", kind=SpanKind.CLIENT, attributes=attributes)
        return _Current(span, ChatSpan(span, capture_content=self.capture_content))

    def tool(self, name: str, call_id: str, arguments: str) -> _Current[Span]:
        attributes = {OPERATION: "execute_tool", "gen_ai.tool.name": name}
        attributes["gen_ai.tool.call.id"] = call_id
        if self.capture_content:
            attributes[content.TOOL_ARGUMENTS] = arguments  # the model's JSON text, as sent
        span = self.tracer.start_span(
            f"execute_tool {name}", kind=SpanKind.INTERNAL, attributes=attributes
        )
        return _Current(span, span)

    def tool_result(self, span: Span, result: str) -> None:
        """The result text the model gets back (recorded only when capture is on)."""
        if self.capture_content and span.is_recording():
            span.set_attribute(content.TOOL_RESULT, result)

    def tool_failed(self, span: Span, error_type: str, message: str) -> None:
        """A tool call that ended as an error result (not an exception)."""
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, message[:500]))


def _trace_id(run: Run | None) -> int | None:
    try:
        return uuid.UUID(run.run_id).int if run is not None else None
    except ValueError:
        return None


def _run_attributes(run: Run) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "culm.run.id": run.run_id,
        "culm.run.trigger": run.trigger.value,
        "culm.run.attempt": run.attempt,
        "gen_ai.request.model": provider_of(run.model)[1],
        PROVIDER: provider_of(run.model)[0],
    }
    if run.parent_run_id:
        attributes["culm.run.parent_id"] = run.parent_run_id
    return attributes


def _failed(span: Span, exc: BaseException, *, run_status: bool = False) -> None:
    if isinstance(exc, asyncio.CancelledError):
        span.set_attribute("error.type", "cancelled")
        if run_status:
            span.set_attribute("culm.run.status", "cancelled")
        return
    code = getattr(exc, "code", None)
    span.set_attribute("error.type", code if isinstance(code, str) else type(exc).__qualname__)
    span.set_status(Status(StatusCode.ERROR, str(exc)[:500]))
    if run_status:
        span.set_attribute("culm.run.status", "error")


def start_proxy_span(
    tracer: trace.Tracer,
    *,
    provider: str,
    model: str | None,
    operation: str,
    traceparent: str | None,
    server: tuple[str, int | None],
) -> Span:
    """The span of one proxied request: ``chat {model}`` (CLIENT) below the caller's
    ``traceparent`` when it sent one, with ``server.address`` / ``server.port`` of the
    upstream. :func:`end_proxy_span` ends it."""
    attributes: dict[str, Any] = {
        OPERATION: operation,
        PROVIDER: provider,
        "server.address": server[0],
    }
    if server[1] is not None:
        attributes["server.port"] = server[1]
    if model:
        attributes["gen_ai.request.model"] = model
    return tracer.start_span(
        f"{operation} {model}" if model else operation,
        context=context_from(traceparent) or otel_context.Context(),
        kind=SpanKind.CLIENT,
        attributes=attributes,
    )


def end_proxy_span(
    span: Span, *, status_code: int, usage: Usage | None, error: str | None, error_type: str
) -> None:
    if span.is_recording():
        span.set_attribute("http.response.status_code", status_code)
        if usage is not None:
            span.set_attributes(usage_attributes(usage))
        if error is not None:
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, error[:500]))
    span.end()
