"""``x-culm-run-id`` / ``traceparent`` → the record's trace id."""

from __future__ import annotations

import uuid

import pytest

from culm.domain.trace import traceparent_for
from culm.proxy.trace import MAX_LENGTH, trace_id

TRACE_HEX = "0af7651916cd43dd8448eb211c80319c"
TRACE_UUID = "0af76519-16cd-43dd-8448-eb211c80319c"
PARENT = f"00-{TRACE_HEX}-b7ad6b7169203331-01".encode()


def test_no_headers_no_trace() -> None:
    assert trace_id([]) is None
    assert trace_id([(b"x-other", b"1")]) is None


def test_run_id_header() -> None:
    assert trace_id([(b"x-culm-run-id", b"  run-42 ")]) == "run-42"


def test_run_id_is_cut_to_the_column_size() -> None:
    assert trace_id([(b"x-culm-run-id", b"r" * 500)]) == "r" * MAX_LENGTH


def test_run_id_wins_over_traceparent() -> None:
    headers = [(b"traceparent", PARENT), (b"x-culm-run-id", b"run-42")]
    assert trace_id(headers) == "run-42"


def test_an_empty_run_id_falls_back_to_traceparent() -> None:
    assert trace_id([(b"x-culm-run-id", b" "), (b"traceparent", PARENT)]) == TRACE_UUID


def test_traceparent_trace_id_in_uuid_form() -> None:
    assert trace_id([(b"traceparent", PARENT)]) == TRACE_UUID
    assert trace_id([(b"traceparent", b" " + PARENT + b" ")]) == TRACE_UUID


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"garbage",
        f"00-{TRACE_HEX.upper()}-b7ad6b7169203331-01".encode(),  # W3C: lower-case hex only
        f"00-{'0' * 32}-b7ad6b7169203331-01".encode(),  # the invalid all-zero trace-id
        f"00-{TRACE_HEX[:-1]}-b7ad6b7169203331-01".encode(),
        f"00-{TRACE_HEX}-b7ad6b716920333-01".encode(),
        f"0-{TRACE_HEX}-b7ad6b7169203331-01".encode(),
    ],
)
def test_invalid_traceparent_gives_no_trace(value: bytes) -> None:
    assert trace_id([(b"traceparent", value)]) is None


def test_the_bash_tools_traceparent_comes_back_as_the_run_id() -> None:
    run_id = str(uuid.uuid4())
    parent = traceparent_for(run_id)
    assert parent is not None
    assert trace_id([(b"traceparent", parent.encode())]) == run_id
