"""Which headers cross the proxy, in each direction, and which credentials go upstream.

Dropped both ways: the hop-by-hop headers of RFC 9110 §7.6.1 and any header the ``Connection``
header names. Upstream, the proxy also drops ``host`` and ``content-length`` (httpx2 sets them),
asks for an uncompressed body (``accept-encoding: identity``, so the usage can be read on the
way) and leaves out its own headers (``x-culm-run-id``). ``traceparent`` goes on.

Credentials (:func:`upstream_headers`): the server's key for the provider when it has one;
otherwise the client's own ``authorization`` / ``x-api-key`` go through, except the one that
carried ``CULM_API_KEY`` to authenticate with culm. So a client of a server without provider
keys sends its culm key in one header and its provider key in the other.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Final

RawHeaders = list[tuple[bytes, bytes]]

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_NOT_FORWARDED: Final = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"accept-encoding",
    b"x-culm-run-id",
    b"authorization",
    b"x-api-key",
}
# uvicorn sends its own ``date`` and ``server``; the upstream's would be duplicates.
_NOT_RETURNED: Final = HOP_BY_HOP | {b"date", b"server"}
CREDENTIAL_HEADERS: Final = (b"authorization", b"x-api-key")


def _connection_listed(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    listed: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            listed.update(token.strip().lower() for token in value.split(b","))
    return listed


def upstream_headers(
    headers: RawHeaders,
    *,
    credential: tuple[bytes, bytes] | None,
    culm_key: bytes | None,
) -> RawHeaders:
    """The request headers to send upstream. ``credential`` is the server's own
    (``(b"authorization", b"Bearer …")`` or ``(b"x-api-key", …)``), ``None`` to pass the
    client's through."""
    listed = _connection_listed(headers)
    forwarded: RawHeaders = [
        (name, value)
        for name, value in headers
        if name not in _NOT_FORWARDED and name not in listed
    ]
    forwarded.append((b"accept-encoding", b"identity"))
    if credential is not None:
        forwarded.append(credential)
        return forwarded
    for name, value in headers:
        if name in CREDENTIAL_HEADERS and not _carries_culm_key(name, value, culm_key):
            forwarded.append((name, value))
    return forwarded


def _carries_culm_key(name: bytes, value: bytes, culm_key: bytes | None) -> bool:
    if culm_key is None:
        return False
    given = value
    if name == b"authorization":
        scheme, _, token = value.partition(b" ")
        if scheme.lower() == b"bearer":  # the scheme is case-insensitive (RFC 9110 §11.1)
            given = token.strip()
    return hmac.compare_digest(given, culm_key)


def redact(text: str, headers: RawHeaders, credential: tuple[bytes, bytes] | None) -> str:
    """``text`` (an upstream's error message, say) without any key the request carried: some
    providers quote the key they refused, and messages are logged and stored."""
    values = [value for name, value in headers if name in CREDENTIAL_HEADERS]
    if credential is not None:
        values.append(credential[1])
    for value in values:
        _, _, token = value.rpartition(b" ")  # "Bearer <token>" or the bare key
        secret = token.decode("latin-1").strip()
        if len(secret) >= 8:  # a shorter "key" would blank out ordinary words
            text = text.replace(secret, "[redacted]")
    return text


def client_headers(headers: Iterable[tuple[bytes, bytes]], *, keep_length: bool) -> RawHeaders:
    """The upstream's response headers to send to the client. ``keep_length``: the body goes
    through unchanged, so its ``content-length`` still holds."""
    pairs = list(headers)
    listed = _connection_listed(pairs)
    return [
        (name, value)
        for name, value in pairs
        if name not in _NOT_RETURNED
        and name not in listed
        and (keep_length or name != b"content-length")
    ]
