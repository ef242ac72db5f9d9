"""culm's own spans for the export it configures itself: the OpenTelemetry API's ``Tracer`` and
``Span``, without the SDK's per-span work.

The SDK's span takes a lock per call, validates every attribute, and feeds a chain of span
processors; its batch processor wakes its thread and keeps the span objects until export. In
the agent loop that was half or more of what export cost. A :class:`LightSpan` is a slotted
object whose scalar attributes are stored as given (the API's types: anything else goes through
the API's cleaning, as the SDK's), used from one thread (the event loop's); ended, it is queued as is for
:class:`culm.tracing.batch.BatchExport`, which encodes it with :mod:`culm.tracing.encode`.

What is kept from the SDK's behaviour: the sampler named by ``OTEL_TRACES_SAMPLER`` (the six
built-in ones; :func:`sampler_from` says which), the parent's trace state, 128 attributes per
span (the oldest dropped and counted beyond), ``set_status`` (an ``OK`` is final; a description
only with ``ERROR``), ``record_exception``, events and links (such a span is written by the SDK's
encoder, from :meth:`LightSpan.readable`). Context propagation is the API's, so a ``traceparent``
in, the bash tool's ``TRACEPARENT`` and sub-agent parentage work as with the SDK.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes, _clean_attribute_value
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import DEFAULT_TRACE_STATE
from opentelemetry.util.types import Attributes

from culm.tracing.spans import NEW_TRACE_ID

if TYPE_CHECKING:
    from culm.tracing.batch import BatchExport

ATTRIBUTE_LIMIT = 128  # the SDK's default span attribute count limit
_SCALARS = (str, bool, int, float)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_UNSET = Status(StatusCode.UNSET)
_TRACE_ID_LIMIT = (1 << 64) - 1
_RANDOM_56 = (1 << 56) - 1  # W3C: the trace id's random part

# (parent span context or None, trace id) -> sampled
Sampler = Callable[[SpanContext | None, int], bool]
SAMPLERS = frozenset(
    (
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    )
)


def sampler_from(name: str, argument: str | None) -> Sampler | None:
    """The sampler ``OTEL_TRACES_SAMPLER`` names (``argument``: ``OTEL_TRACES_SAMPLER_ARG``), as
    the SDK's: a ratio samples the trace ids whose lower 64 bits are below ``ratio * 2**64``
    (1.0 when the argument is not a number); ``parentbased_*`` follows a valid parent's sampled
    flag. None for a name not in :data:`SAMPLERS` (the SDK's path handles those)."""
    name = name.strip().lower() or "parentbased_always_on"
    if name not in SAMPLERS:
        return None
    root = name.removeprefix("parentbased_")
    if root == "traceidratio":
        try:
            rate = float(argument or "")
        except ValueError:
            rate = 1.0
        bound = round(rate * (_TRACE_ID_LIMIT + 1))

        def decide(trace_id: int) -> bool:
            return trace_id & _TRACE_ID_LIMIT < bound
    else:
        always = root == "always_on"

        def decide(trace_id: int) -> bool:
            return always

    if not name.startswith("parentbased_"):
        return lambda parent, trace_id: decide(trace_id)
    return lambda parent, trace_id: (
        parent.trace_flags.sampled if parent is not None else decide(trace_id)
    )


class LightTracer(trace.Tracer):
    """Makes :class:`LightSpan` objects (or, sampled out, the API's non-recording span with a
    context of its own) and hands them to ``batch`` when they end."""

    def __init__(
        self,
        batch: BatchExport,
        *,
        resource: Resource,
        scope: InstrumentationScope,
        sampler: Sampler,
    ) -> None:
        self.batch = batch
        self.resource = resource
        self.scope = scope
        self._sampler = sampler

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent: SpanContext | None = trace.get_current_span(context).get_span_context()
        if parent is not None and parent.is_valid:
            trace_id, state = parent.trace_id, parent.trace_state
            sampled = self._sampler(parent, trace_id)
        else:
            parent, state = None, DEFAULT_TRACE_STATE
            run_id = NEW_TRACE_ID.get()
            trace_id = run_id or random.getrandbits(128) or 1
            # A run id (UUID4) has fixed variant bits in its lower 64: a ratio decides on its
            # random lower 56 bits, moved up (else a ratio below 0.5 would sample no run).
            sampled = self._sampler(None, (run_id & _RANDOM_56) << 8 if run_id else trace_id)
        span_id = random.getrandbits(64) or 1
        flags = _SAMPLED if sampled else _NOT_SAMPLED
        span_context = SpanContext(trace_id, span_id, False, flags, state)
        if not sampled:
            return trace.NonRecordingSpan(span_context)
        span = LightSpan(self, name, span_context, parent, kind, start_time)
        if attributes:
            span.set_attributes(attributes)
        for link in links or ():
            span.add_link(link.context, link.attributes)
        return span

    @contextmanager  # the API's is also an async-function decorator: not needed here
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        with trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current


class LightSpan(trace.Span):
    """A recording span: what the OTLP encoder reads (``name``, ``kind``, ``attributes``, …, as
    the SDK's ``ReadableSpan`` names them), set from one thread at a time (no lock)."""

    __slots__ = (
        "_context",
        "_tracer",
        "attributes",
        "dropped_attributes",
        "end_time",
        "events",
        "kind",
        "links",
        "name",
        "parent",
        "start_time",
        "status",
    )

    def __init__(
        self,
        tracer: LightTracer,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        start_time: int | None = None,
    ) -> None:
        self._tracer = tracer
        self._context = context
        self.name = name
        self.parent = parent
        self.kind = kind
        self.attributes: dict[str, Any] = {}
        self.dropped_attributes = 0
        self.events: tuple[Event, ...] = ()
        self.links: tuple[Link, ...] = ()
        self.status = _UNSET
        self.start_time = start_time or time.time_ns()
        self.end_time: int | None = None

    @property
    def resource(self) -> Resource:
        return self._tracer.resource

    @property
    def instrumentation_scope(self) -> InstrumentationScope:
        return self._tracer.scope

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attribute(self, key: str, value: Any) -> None:
        if self.end_time is not None:
            return
        if not key or type(key) is not str:
            self.dropped_attributes += 1  # as the SDK's bounded dict
            return
        if type(value) not in _SCALARS:
            value = _clean_attribute_value(value, None)  # the SDK's cleaning
        attributes = self.attributes
        if key not in attributes and len(attributes) >= ATTRIBUTE_LIMIT:
            del attributes[next(iter(attributes))]  # the oldest, as the SDK's bounded dict
            self.dropped_attributes += 1
        attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if self.end_time is not None:
            return
        mine = self.attributes
        for key, value in attributes.items():  # set_attribute's common case, inlined
            if (
                type(value) in _SCALARS
                and type(key) is str
                and key
                and (key in mine or len(mine) < ATTRIBUTE_LIMIT)
            ):
                mine[key] = value
            else:
                self.set_attribute(key, value)

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self.end_time is not None or self.status.status_code is StatusCode.OK:
            return  # ended, or OK already: final
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self.status = status

    def update_name(self, name: str) -> None:
        if self.end_time is None:
            self.name = name

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        if self.end_time is None:
            self.events = (*self.events, Event(name, attributes, timestamp or time.time_ns()))

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        if self.end_time is None and context.is_valid:
            self.links = (*self.links, Link(context, attributes))

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        kind = type(exception)
        module = kind.__module__
        recorded: dict[str, Any] = {
            "exception.type": f"{module}.{kind.__qualname__}"
            if module and module != "builtins"
            else kind.__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        recorded.update(attributes or {})
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is not None:
            return
        self.end_time = end_time or time.time_ns()
        self._tracer.batch.on_end(self)

    def readable(self) -> ReadableSpan:
        """The SDK's span object for this span (for the SDK's encoder)."""
        attributes = BoundedAttributes(None, self.attributes, immutable=True)
        attributes.dropped = self.dropped_attributes
        return ReadableSpan(
            self.name,
            self._context,
            self.parent,
            self.resource,
            attributes,
            self.events,
            self.links,
            self.kind,
            status=self.status,
            start_time=self.start_time,
            end_time=self.end_time,
            instrumentation_scope=self.instrumentation_scope,
        )
