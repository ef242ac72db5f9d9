"""What an engine process does: the role picks which parts ``Engine`` wires up.

======== ======== ======================= ============= ========================================
role     HTTP API worker (claims runs)     ticker        used by
======== ======== ======================= ============= ========================================
EMBEDDED yes      yes                     yes           plain ``culm serve``, the Python API
API      yes      no                      no            ``culm serve --no-worker``
WORKER   no       yes                     by setting    ``culm worker`` (``CULM_SCHEDULER``)
CLI      no       no (its own run only)   no            ``culm run``
======== ======== ======================= ============= ========================================

The HTTP column is the caller's business (the engine has no server); the others are wired in
``culm.services.Engine``.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    EMBEDDED = "embedded"
    API = "api"
    WORKER = "worker"
    CLI = "cli"

    @property
    def claims(self) -> bool:
        """Whether the process claims ready runs from the queue (anyone's)."""
        return self in (Role.EMBEDDED, Role.WORKER)

    @property
    def ticks(self) -> bool:
        """Whether the process may run the schedule ticker (``CULM_SCHEDULER`` still decides)."""
        return self in (Role.EMBEDDED, Role.WORKER)

    @property
    def worker_kind(self) -> str:
        """The ``workers.kind`` of its row: 'embedded', 'worker' or 'cli' (API has none)."""
        return "embedded" if self is Role.EMBEDDED else self.value
