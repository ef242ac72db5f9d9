"""Who owns a run: ``host:pid:token`` per engine instance, and whether a process is this
machine's (same host name, boot and PID namespace) so that its pid can be checked.

The pid shortcut (a restart recovers its dead predecessor's runs at once instead of waiting
for their leases to run out) is only sound when all three match: two containers on the host
network share a host name but not a PID namespace, and a pid means nothing after a reboot.
"""

from __future__ import annotations

import os
import socket
from functools import cache

from culm.domain.time import new_id


def new_owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{new_id()[:8]}"


@cache
def boot_id() -> str | None:
    """This boot's id (``/proc/sys/kernel/random/boot_id``), None where there is none."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as file:
            return file.read().strip() or None
    except OSError:
        return None


def pid_namespace() -> str | None:
    """The inode of this process's PID namespace (``/proc/self/ns/pid``), None where unknown."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return None


def same_machine(host: str, boot: str | None, namespace: str | None) -> bool:
    """Whether a process registered with these is on this machine, this boot, and in this
    PID namespace: only then does its pid name a process here. Unknown never matches."""
    return (
        host == socket.gethostname()
        and boot is not None
        and boot == boot_id()
        and namespace is not None
        and namespace == pid_namespace()
    )


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists here (only meaningful on :func:`same_machine`)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
