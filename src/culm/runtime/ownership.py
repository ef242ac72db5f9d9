"""Who owns a run: ``host:pid:token`` per engine instance, and whether an owner is gone."""

from __future__ import annotations

import os
import socket
from datetime import datetime

from culm.domain.time import new_id, utc_now


def new_owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{new_id()[:8]}"


def owner_is_gone(owner: str | None, lease_expires_at: datetime | None) -> bool:
    """True when the run's owner cannot still be running it.

    An expired (or missing) lease means gone. So does an owner process on this host that no
    longer exists: a restart recovers at once instead of waiting for the lease to run out.
    """
    if owner is None or lease_expired(lease_expires_at):
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    return pid != os.getpid() and not _pid_alive(pid)


def lease_expired(lease_expires_at: datetime | None) -> bool:
    """True when nobody holds the lease (none, or run out)."""
    return lease_expires_at is None or lease_expires_at <= utc_now()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
