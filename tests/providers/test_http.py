"""Error mapping shared by the adapters: statuses, provider messages, Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from culm.errors import ModelAuthError, ModelHTTPError, ModelRequestError
from culm.providers.catalog import ProviderConfig
from culm.providers.http import error_from_payload, http_error, parse_retry_after, provider_message

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def config(key: str | None = "sk-test") -> ProviderConfig:
    return ProviderConfig(
        name="openai",
        wire_format="chat_completions",
        base_url="http://127.0.0.1:1/v1",
        api_key=SecretStr(key) if key is not None else None,
        key_env="OPENAI_API_KEY",
        key_required=False,
    )


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "12"}, 12.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after": "Thu, 01 Jan 2026 12:00:20 GMT"}, 20.0),
        ({"retry-after": "Thu, 01 Jan 2026 11:59:00 GMT"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-3"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after-ms": "250", "retry-after": "1"}, 0.25),
        ({"retry-after-ms": "bogus", "retry-after": "1"}, 1.0),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, now=NOW) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"error": {"message": "Bad key", "type": "invalid_request_error"}}', "Bad key"),
        (b'{"type": "error", "error": {"type": "x", "message": "Overloaded"}}', "Overloaded"),
        (b'{"error": "model \\"llama\\" not found"}', 'model "llama" not found'),
        (b'{"detail": "Not Found"}', "Not Found"),
        (b'{"object": "error", "message": "vLLM says no", "code": 400}', "vLLM says no"),
        (b"<html>\n  <h1>502 Bad Gateway</h1>\n</html>", "<html> <h1>502 Bad Gateway</h1> </html>"),
        (b"", "(empty body)"),
    ],
)
def test_provider_message(body: bytes, expected: str) -> None:
    assert provider_message(body) == expected


def test_auth_error_names_a_missing_key() -> None:
    error = http_error(config(key=None), 401, "Unauthorized")
    assert isinstance(error, ModelAuthError)
    assert str(error) == "openai API error (HTTP 401): Unauthorized (OPENAI_API_KEY is not set)"


@pytest.mark.parametrize(
    ("status", "error_type", "retryable"),
    [
        (401, ModelAuthError, False),
        (403, ModelAuthError, False),
        (400, ModelRequestError, False),
        (404, ModelRequestError, False),
        (413, ModelRequestError, False),
        (422, ModelRequestError, False),
        (408, ModelHTTPError, False),
        (429, ModelHTTPError, True),
        (500, ModelHTTPError, True),
        (503, ModelHTTPError, True),
    ],
)
def test_status_mapping(status: int, error_type: type[ModelHTTPError], retryable: bool) -> None:
    error = http_error(config(), status, "msg", retry_after=3.0)
    assert type(error) is error_type
    assert (error.status, error.retry_after, error.retryable) == (status, 3.0, retryable)


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"error": {"message": "m", "type": "server_error"}}, 500),
        ({"error": {"message": "m", "code": "rate_limit_exceeded"}}, 429),
        ({"error": {"message": "m", "code": 400}}, 400),
        ({"type": "error", "error": {"type": "overloaded_error", "message": "m"}}, 529),
        ({"type": "error", "error": {"type": "new_kind_of_error", "message": "m"}}, 500),
        ({"error": "m"}, 500),
    ],
)
def test_errors_inside_a_stream(payload: dict[str, object], status: int) -> None:
    error = error_from_payload(config(), payload)
    assert error.status == status
    assert str(error).endswith(": m")
