"""Who owns a run: ``host:pid:token`` per engine instance, and whether an owner is gone.

A host name alone does not say that two processes share a machine: containers on the host
network share it, and so do a process and one in another PID namespace, where the same pid is a
different process. :func:`same_machine` asks for the host name, the kernel's boot id and the PID
namespace (the inode of ``/proc/self/ns/pid``); only then may a pid be checked with ``kill 0``.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from pathlib import Path

from culm.domain.time import new_id, utc_now

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
PID_NAMESPACE_PATH = "/proc/self/ns/pid"


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


def boot_id() -> str | None:
    """The kernel's boot id (``/proc/sys/kernel/random/boot_id``): new at every boot of the
    machine, the same in every container and namespace on it. None without ``/proc``."""
    try:
        text = Path(BOOT_ID_PATH).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def pid_namespace() -> str | None:
    """This process's PID namespace: the inode of ``/proc/self/ns/pid``, as text (the number
    ``readlink`` shows as ``pid:[…]``). None without ``/proc``."""
    try:
        return str(os.stat(PID_NAMESPACE_PATH).st_ino)
    except OSError:
        return None


def same_machine(host: str, boot_id: str | None, pid_namespace: str | None) -> bool:
    """True when a process that recorded these three values runs on this machine, in this boot
    and in this PID namespace, so its pid means the same process here. Anything unknown (None,
    here or there) counts as not the same."""
    there = (host, boot_id, pid_namespace)
    here = _here()
    return None not in here and None not in there and there == here


def _here() -> tuple[str, str | None, str | None]:
    return socket.gethostname(), boot_id(), pid_namespace()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
