"""OpenTelemetry traces following the GenAI semantic conventions (see :mod:`culm.tracing.spans`).

:func:`~culm.tracing.setup.build_tracing` exports over OTLP/HTTP when the standard environment
asks for it (``OTEL_EXPORTER_OTLP_ENDPOINT`` …, the ``otel`` extra installed); otherwise culm
uses the API's no-op tracer.
"""

from culm.tracing.setup import Tracing, build_tracing
from culm.tracing.spans import RunTracing, current_traceparent

__all__ = ["RunTracing", "Tracing", "build_tracing", "current_traceparent"]
