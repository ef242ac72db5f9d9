"""W3C trace context for runs: a run id (a UUID) and a trace-id (32 hex digits) are both 16
bytes, so each is the other written differently. A tool's HTTP calls carry the run's
``traceparent``; the proxy turns its trace-id back into the run id."""

from __future__ import annotations

import re
from typing import Final

_HEX32 = re.compile(r"[0-9a-f]{32}")
_NO_TRACE: Final = "0" * 32


def traceparent_for(run_id: str) -> str | None:
    """A ``traceparent`` whose trace-id is ``run_id``, or ``None`` when it is not a UUID."""
    hex32 = run_id.replace("-", "").lower()
    if not _HEX32.fullmatch(hex32) or hex32 == _NO_TRACE:
        return None
    return f"00-{hex32}-{hex32[16:]}-01"


def run_id_for(trace_hex: str) -> str | None:
    """The UUID form of a 32-hex-digit trace-id (``None`` for the invalid all-zero one)."""
    hex32 = trace_hex.lower()
    if not _HEX32.fullmatch(hex32) or hex32 == _NO_TRACE:
        return None
    return f"{hex32[:8]}-{hex32[8:12]}-{hex32[12:16]}-{hex32[16:20]}-{hex32[20:]}"
