"""The OTLP/HTTP span exporter culm uses: the SDK's, sending what
:class:`~culm.tracing.encode.SpanEncoder` writes (the bytes the SDK's encoder would send, at
about a quarter of its CPU). It reads the standard environment (endpoint, headers, timeout,
compression, …) as the SDK's does; only the encoding differs.

``export`` follows the SDK's (internal metrics, the request-size limit, the HTTP client with
its retries) through attributes the SDK does not promise to keep: when one is missing (another
SDK version), or encoding fails, the SDK's own ``export`` runs instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE

from culm.tracing.encode import SpanEncoder, readable

_log = logging.getLogger(__name__)
_SDK_ATTRIBUTES = ("_shutdown", "_metrics", "_client", "_max_request_size")


class OTLPExporter(OTLPSpanExporter):
    """``OTLPSpanExporter`` with culm's encoder."""

    def __init__(self) -> None:
        super().__init__()
        self._encoder = SpanEncoder()
        self.fast = all(hasattr(self, name) for name in _SDK_ATTRIBUTES)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not self.fast or self._shutdown:
            return super().export([readable(span) for span in spans])
        try:
            data = self._encoder.encode(spans)
        except Exception:  # the SDK's encoder (and its error handling) decides
            _log.debug("culm's span encoder failed; the SDK's encodes", exc_info=True)
            return super().export([readable(span) for span in spans])
        with self._metrics.export_operation(len(spans)) as result:
            if 0 < self._max_request_size < len(data):
                _log.warning(
                    "Dropping span batch: serialized size %d bytes exceeds max_request_size "
                    "%d bytes.",
                    len(data),
                    self._max_request_size,
                )
                result.error = ValueError("span batch larger than max_request_size")
                return SpanExportResult.FAILURE
            sent = self._client.export(data)
            if not sent.success:
                result.error = sent.error
                if sent.status_code is not None:
                    result.error_attrs = {HTTP_RESPONSE_STATUS_CODE: sent.status_code}
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS
