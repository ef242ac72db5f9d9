"""Which headers cross the proxy, each way, and whose credentials go upstream."""

from __future__ import annotations

import pytest

from culm.proxy.headers import (
    HOP_BY_HOP,
    RawHeaders,
    client_headers,
    redact,
    upstream_headers,
)

CULM_KEY = b"culm-secret"
SERVER = (b"authorization", b"Bearer sk-server")


def names(headers: RawHeaders) -> list[bytes]:
    return [name for name, _ in headers]


def test_upstream_keeps_the_end_to_end_headers_in_order() -> None:
    headers = [
        (b"host", b"127.0.0.1:8420"),
        (b"content-type", b"application/json"),
        (b"content-length", b"12"),
        (b"accept-encoding", b"gzip, br"),
        (b"x-stainless-retry-count", b"0"),
        (b"anthropic-version", b"2023-06-01"),
        (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        (b"x-culm-run-id", b"run-1"),
        (b"accept", b"text/event-stream"),
    ]
    assert upstream_headers(headers, credential=None, culm_key=None) == [
        (b"content-type", b"application/json"),
        (b"x-stainless-retry-count", b"0"),
        (b"anthropic-version", b"2023-06-01"),
        (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        (b"accept", b"text/event-stream"),
        (b"accept-encoding", b"identity"),
    ]


def test_upstream_drops_hop_by_hop_and_connection_listed_headers() -> None:
    headers = [(name, b"1") for name in sorted(HOP_BY_HOP)] + [
        (b"connection", b"X-Foo , x-bar"),
        (b"x-foo", b"1"),
        (b"x-bar", b"2"),
        (b"x-baz", b"3"),
    ]
    assert upstream_headers(headers, credential=None, culm_key=None) == [
        (b"x-baz", b"3"),
        (b"accept-encoding", b"identity"),
    ]


def test_the_server_key_replaces_the_clients() -> None:
    headers = [(b"authorization", b"Bearer sk-client"), (b"x-api-key", b"ak-client")]
    forwarded = upstream_headers(headers, credential=SERVER, culm_key=None)
    assert forwarded == [(b"accept-encoding", b"identity"), SERVER]
    anthropic = upstream_headers(headers, credential=(b"x-api-key", b"ak-server"), culm_key=None)
    assert anthropic == [(b"accept-encoding", b"identity"), (b"x-api-key", b"ak-server")]


def test_the_server_key_replaces_the_culm_key_too() -> None:
    headers = [(b"authorization", b"Bearer " + CULM_KEY)]
    assert upstream_headers(headers, credential=SERVER, culm_key=CULM_KEY)[-1:] == [SERVER]


def test_without_a_server_key_the_clients_keys_go_through() -> None:
    headers = [(b"authorization", b"Bearer sk-client"), (b"x-api-key", b"ak-client")]
    assert upstream_headers(headers, credential=None, culm_key=CULM_KEY) == [
        (b"accept-encoding", b"identity"),
        (b"authorization", b"Bearer sk-client"),
        (b"x-api-key", b"ak-client"),
    ]


@pytest.mark.parametrize(
    ("headers", "passed"),
    [
        ([(b"authorization", b"Bearer " + CULM_KEY), (b"x-api-key", b"ak-client")], b"x-api-key"),
        ([(b"x-api-key", CULM_KEY), (b"authorization", b"Bearer sk-client")], b"authorization"),
        ([(b"x-api-key", CULM_KEY), (b"authorization", b"bearer " + CULM_KEY)], None),
        ([(b"x-api-key", CULM_KEY), (b"authorization", b"BEARER  " + CULM_KEY)], None),
        ([(b"authorization", b"Bearer " + CULM_KEY), (b"x-api-key", CULM_KEY)], None),
    ],
)
def test_the_header_that_carried_the_culm_key_stays(
    headers: RawHeaders, passed: bytes | None
) -> None:
    forwarded = upstream_headers(headers, credential=None, culm_key=CULM_KEY)
    assert all(CULM_KEY not in value for _, value in forwarded)
    assert names(forwarded) == [b"accept-encoding", *([passed] if passed else [])]


def test_a_key_that_merely_contains_the_culm_key_goes_through() -> None:
    headers = [(b"x-api-key", CULM_KEY + b"-and-more")]
    forwarded = upstream_headers(headers, credential=None, culm_key=CULM_KEY)
    assert forwarded[-1] == (b"x-api-key", CULM_KEY + b"-and-more")


def test_client_gets_the_end_to_end_response_headers() -> None:
    headers = [
        (b"content-type", b"text/event-stream"),
        (b"content-length", b"99"),
        (b"date", b"Mon, 01 Jan 2026 00:00:00 GMT"),
        (b"server", b"cloudflare"),
        (b"connection", b"x-trace, close"),
        (b"x-trace", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"proxy-authenticate", b"Basic"),
        (b"retry-after", b"7"),
        (b"x-request-id", b"req_1"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]
    kept = [
        (b"content-type", b"text/event-stream"),
        (b"retry-after", b"7"),
        (b"x-request-id", b"req_1"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]
    assert client_headers(iter(headers), keep_length=False) == kept
    with_length = [kept[0], (b"content-length", b"99"), *kept[1:]]
    assert client_headers(headers, keep_length=True) == with_length


def test_redact_removes_every_key_the_request_carried() -> None:
    headers = [(b"authorization", b"Bearer sk-client-123456"), (b"x-api-key", b"culm-key-abcdef")]
    message = (
        "Incorrect API key provided: sk-client-123456 (also culm-key-abcdef, sk-server-999999)"
    )
    redacted = redact(message, headers, (b"authorization", b"Bearer sk-server-999999"))
    assert redacted == "Incorrect API key provided: [redacted] (also [redacted], [redacted])"


def test_redact_leaves_short_values_and_other_text_alone() -> None:
    headers = [(b"x-api-key", b"key"), (b"content-type", b"application/json")]
    assert redact("no key in application/json", headers, None) == "no key in application/json"
