"""Which run a proxied request belongs to: its metrics ``trace_id``.

``x-culm-run-id: <run_id>`` names the run. Otherwise a W3C ``traceparent``
(``00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>``) gives its trace-id, written as a
UUID (:func:`culm.domain.trace.run_id_for`), so a trace started from a run id (the
``TRACEPARENT`` that culm's ``bash`` tool exports) comes back as that run id.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from culm.domain.trace import run_id_for

MAX_LENGTH: Final = 200  # the metrics column's size
_TRACEPARENT = re.compile(rb"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def trace_id(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The trace id of a request with these (lower-case) headers, or ``None``."""
    run_id = parent = None
    for name, value in headers:
        if name == b"x-culm-run-id":
            run_id = value.strip()
        elif name == b"traceparent":
            parent = value.strip()
    if run_id:
        return run_id.decode("latin-1")[:MAX_LENGTH]
    if parent and (match := _TRACEPARENT.match(parent)):
        return run_id_for(match[1].decode())
    return None
