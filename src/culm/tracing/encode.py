"""OTLP's protobuf encoding of a batch of finished spans, written directly: the same message the
exporter's own encoder builds (``ExportTraceServiceRequest``), at a fraction of its CPU.

The exporter's encoder builds a protobuf object per span, attribute and value, and hashes the
resource (a JSON dump) once per span; culm's spans are few-attribute and repetitive, so here a
span is written field by field and an attribute whose value is a string, bool or int is
encoded once and reused. A span with events or links, or an attribute of another type than
str, bool, int, float or a sequence of those, is encoded by the exporter's encoder
(``encode_spans``), so the output is always the message that encoder would send. culm's own
spans (:mod:`culm.tracing.light`) have the attributes read here; the exporter's encoder gets
the SDK's span object they make.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

_CACHE_LIMIT = 4096  # encoded attributes (and names) kept; cleared when full
_HEADERS_LIMIT = 64  # encoded resources and scopes kept; cleared when full
_FIXED64 = struct.Struct("<Q").pack
_DOUBLE = struct.Struct("<d").pack
_FIXED32 = struct.Struct("<I").pack
_SCALARS = (str, bool, int, float)
_CACHED = frozenset((str, bool, int))  # exact types: a subclass may encode differently
_KINDS = {kind: b"\x30" + bytes((kind.value + 1,)) for kind in SpanKind}  # OTLP's = SDK's + 1


class _NotFast(Exception):
    """A span the exporter's own encoder writes."""


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field."""
    return tag + _varint(len(payload)) + payload


def _any_value(value: Any) -> bytes:
    if isinstance(value, str):
        return _field(b"\x0a", value.encode())
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        if not all(isinstance(item, _SCALARS) for item in value):
            raise _NotFast
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(item)) for item in value))
    raise _NotFast


class SpanEncoder:
    """Encodes batches of spans; holds what repeats (attributes, resource and scope)."""

    def __init__(self) -> None:
        self._attributes: dict[tuple[str, type, Any], bytes] = {}
        self._names: dict[str, bytes] = {}
        self._headers: dict[tuple[int, bool], tuple[object, bytes, bytes]] = {}

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        """``ExportTraceServiceRequest`` with ``spans``, serialized: a ``ResourceSpans`` per
        resource, in it a ``ScopeSpans`` per scope (each in the order first seen, as the SDK's
        encoder groups them; by object here, where it compares them)."""
        groups: dict[int, tuple[bytes, bytes, dict[int, tuple[bytes, bytes, list[bytes]]]]] = {}
        for span in spans:
            resource, scope = span.resource, span.instrumentation_scope
            if id(resource) not in groups:
                groups[id(resource)] = (*self._header(resource, span, scope=False), {})
            scopes = groups[id(resource)][2]
            if id(scope) not in scopes:
                scopes[id(scope)] = (*self._header(scope, span, scope=True), [])
            try:
                encoded = self._span(span)
            except _NotFast:
                encoded = _sdk_span(span)
            scopes[id(scope)][2].append(_field(b"\x12", encoded))
        out = []
        for resource_field, resource_url, scopes in groups.values():
            scope_spans = b"".join(
                _field(b"\x12", scope_field + b"".join(encoded) + scope_url)
                for scope_field, scope_url, encoded in scopes.values()
            )
            out.append(_field(b"\x0a", resource_field + scope_spans + resource_url))
        return b"".join(out)

    def _header(self, owner: object, span: ReadableSpan, *, scope: bool) -> tuple[bytes, bytes]:
        """A resource's or scope's field and schema URL field (``owner``: the span's
        resource or scope, kept alive with them so that its id stays its own)."""
        key = (id(owner), scope)
        if key not in self._headers:
            if len(self._headers) >= _HEADERS_LIMIT:  # not culm's one provider and tracer
                self._headers.clear()
            fields = _headers(span)
            self._headers[key] = (owner, *fields[2:]) if scope else (owner, *fields[:2])
        return self._headers[key][1:]

    def _span(self, span: ReadableSpan) -> bytes:
        if span.events or span.links:
            raise _NotFast
        context = span.get_span_context()
        if context is None or span.start_time is None or span.end_time is None:
            raise _NotFast
        parts = [
            b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
            b"\x12\x08" + context.span_id.to_bytes(8, "big"),
        ]
        if context.trace_state:
            state = ",".join(f"{key}={value}" for key, value in context.trace_state.items())
            parts.append(_field(b"\x1a", state.encode()))
        parent = span.parent
        if parent is not None:
            parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
        parts.append(self._name(span.name))
        parts.append(_KINDS[span.kind])
        parts.append(b"\x39" + _FIXED64(span.start_time))
        parts.append(b"\x41" + _FIXED64(span.end_time))
        cache = self._attributes
        for key, value in (span.attributes or {}).items():
            encoded = cache.get((key, type(value), value)) if type(value) in _CACHED else None
            parts.append(encoded or self._attribute(key, value))
        if span.dropped_attributes:
            parts.append(b"\x50" + _varint(span.dropped_attributes))
        parts.append(_field(b"\x7a", _status(span)))
        flags = 0x100 | (0x200 if parent is not None and parent.is_remote else 0)
        parts.append(b"\x85\x01" + _FIXED32(flags))
        return b"".join(parts)

    def _attribute(self, key: str, value: Any) -> bytes:
        """A ``KeyValue`` field of a span (field 9), kept when its value is a str, bool or int."""
        pair = _field(b"\x0a", key.encode()) + _field(b"\x12", _any_value(value))
        encoded = _field(b"\x4a", pair)
        if type(value) in _CACHED:
            if len(self._attributes) >= _CACHE_LIMIT:
                self._attributes.clear()
            self._attributes[(key, type(value), value)] = encoded
        return encoded

    def _name(self, name: str) -> bytes:
        encoded = self._names.get(name)
        if encoded is None:
            if len(self._names) >= _CACHE_LIMIT:
                self._names.clear()
            encoded = self._names[name] = _field(b"\x2a", name.encode())
        return encoded


def _status(span: ReadableSpan) -> bytes:
    status = span.status
    out = b""
    if status.description:
        out += _field(b"\x12", status.description.encode())
    if status.status_code.value:
        out += b"\x18" + _varint(status.status_code.value)
    return out


def readable(span: Any) -> ReadableSpan:
    """The SDK's span object for ``span`` (culm's own spans make one: the SDK encodes those)."""
    make = getattr(span, "readable", None)
    return make() if make is not None else span  # type: ignore[no-any-return]


def _sdk_span(span: ReadableSpan) -> bytes:
    request = encode_spans([readable(span)])
    return bytes(request.resource_spans[0].scope_spans[0].spans[0].SerializeToString())


def _headers(span: ReadableSpan) -> tuple[bytes, bytes, bytes, bytes]:
    """A span's resource and scope fields as the exporter's encoder writes them, each with its
    schema URL field: (resource, its URL, scope, its URL)."""
    request = encode_spans([readable(span)]).resource_spans[0]
    scope = request.scope_spans[0]
    return (
        _field(b"\x0a", bytes(request.resource.SerializeToString())),
        _field(b"\x1a", request.schema_url.encode()) if request.schema_url else b"",
        _field(b"\x0a", bytes(scope.scope.SerializeToString())),
        _field(b"\x1a", scope.schema_url.encode()) if scope.schema_url else b"",
    )
