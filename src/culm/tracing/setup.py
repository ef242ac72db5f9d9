"""The tracer culm's spans go to: culm's own spans or the SDK's, exported over OTLP/HTTP, or
the no-op tracer.

Export is on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is
set (and ``OTEL_SDK_DISABLED`` is not ``true``, nor ``OTEL_TRACES_EXPORTER`` ``none``); the
exporter reads the rest of the standard variables itself (headers, timeout, compression, …).
The spans are culm's own (:mod:`culm.tracing.light`, batched by :mod:`culm.tracing.batch`,
``OTEL_BSP_*`` honoured) unless a setting asks for what only the SDK does: a sampler other than
the six built-in ones, a span limit (``OTEL_*_LIMIT``), or an SDK whose exporter internals
culm's encoder relies on are missing; then the SDK's ``TracerProvider`` and batch processor.
Either way the resource is ``service.name`` (``OTEL_SERVICE_NAME``, default ``culm``) merged
with ``OTEL_RESOURCE_ATTRIBUTES``. The engine owns its tracer provider (no global one is set)
and shuts it down on close, which sends what is still queued. Message content is recorded only if
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` is ``true``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from culm._version import __version__
from culm.domain.models import Run, Session
from culm.logs import get_logger
from culm.tracing.spans import NEW_TRACE_ID, RunTracing

log = get_logger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
CAPTURE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
SAMPLER, SAMPLER_ARG = "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"
LIMIT_VARIABLES = (
    "OTEL_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_SPAN_EVENT_COUNT_LIMIT",
    "OTEL_SPAN_LINK_COUNT_LIMIT",
    "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT",
)


@dataclass(frozen=True, slots=True)
class Tracing:
    """The engine's tracer; ``provider`` (None: no-op) has ``force_flush`` and ``shutdown``: the
    SDK's ``TracerProvider`` or culm's :class:`~culm.tracing.batch.BatchExport`."""

    tracer: trace.Tracer
    provider: Any = None
    capture_content: bool = False

    @property
    def exporting(self) -> bool:
        return self.provider is not None

    def for_run(self, run: Run, session: Session, agent_name: str | None = None) -> RunTracing:
        return RunTracing(
            self.tracer,
            run=run,
            session=session,
            agent_name=agent_name,
            capture_content=self.capture_content,
        )

    async def aclose(self) -> None:
        """Send the spans still queued (blocking calls, off the event loop)."""
        if self.provider is not None:
            await asyncio.to_thread(self.provider.shutdown)


def export_requested(environ: Mapping[str, str]) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def _limits_set(environ: Mapping[str, str]) -> bool:
    """Whether a span limit other than the defaults is asked for (the SDK's path applies it)."""
    return any(environ.get(name, "").strip() for name in LIMIT_VARIABLES)


def _run_trace_ids() -> Any:
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class RunTraceIds(RandomIdGenerator):
        """A new trace's id is the run's that starts it (``NEW_TRACE_ID``), else random."""

        def generate_trace_id(self) -> int:
            return NEW_TRACE_ID.get() or super().generate_trace_id()

    return RunTraceIds()


def build_tracing(environ: Mapping[str, str] | None = None, *, light: bool = True) -> Tracing:
    """The tracing the environment asks for (``environ``: default ``os.environ``): culm's own
    spans (:mod:`culm.tracing.light`) when it can honour every setting given, else the SDK's
    (``light=False``: always the SDK's)."""
    environ = os.environ if environ is None else environ
    capture = environ.get(CAPTURE_CONTENT, "").strip().lower() == "true"
    if not export_requested(environ):
        return Tracing(trace.NoOpTracer(), capture_content=capture)
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        from culm.tracing.batch import BatchExport, BatchLimits
        from culm.tracing.light import LightTracer, sampler_from
        from culm.tracing.otlp import OTLPExporter
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but culm[otel] is not installed: no traces")
        return Tracing(trace.NoOpTracer(), capture_content=capture)
    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME") or "culm"})
    exporter = OTLPExporter()
    sampler = sampler_from(environ.get(SAMPLER, ""), environ.get(SAMPLER_ARG))
    if light and sampler is not None and exporter.fast and not _limits_set(environ):
        batch = BatchExport(exporter, BatchLimits.from_env(environ))
        scope = InstrumentationScope("culm", __version__)
        light_tracer = LightTracer(batch, resource=resource, scope=scope, sampler=sampler)
        return Tracing(light_tracer, batch, capture_content=capture)
    provider = TracerProvider(resource=resource, id_generator=_run_trace_ids())
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("culm", __version__)
    return Tracing(tracer, provider, capture_content=capture)
