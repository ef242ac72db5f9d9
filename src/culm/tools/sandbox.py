"""Confinement of the ``bash`` tool with bubblewrap (``bwrap``), chosen by ``CULM_BASH_SANDBOX``.

``auto`` (the default) uses bwrap when it is installed and works here (it needs the right to make
mount and PID namespaces: root, or unprivileged user namespaces), else runs commands unconfined
and says so in a warning, in ``/health`` (``bash_sandbox``) and in ``culm serve``'s start-up
line. ``bwrap`` refuses to start without a working bwrap; ``none`` never confines.

Under bwrap a command sees:

- the workspace, read-write, at its real path (its working directory);
- the system, read-only: ``/usr``, ``/bin``, ``/sbin``, ``/lib*``, ``/opt`` and ``/etc``, with
  the host's secrets in ``/etc`` hidden (:data:`ETC_SECRETS`: shadow files, sudoers, SSH host
  keys, TLS private keys), the Python installation culm runs on (``sys.prefix`` and
  ``sys.base_prefix``, so ``python`` works as it does for culm), and the directories named in
  ``CULM_BASH_READ_ONLY_PATHS``;
- a private ``/tmp`` (empty, also its ``HOME``), its own ``/proc`` and a minimal ``/dev``;
- nothing else of the host: no home directories, no ``/root``, no ``CULM_HOME`` (the database,
  the scripts, other sessions' workspaces), no ``/run``, no ``/var``, no ``/srv``, no ``/mnt``;
- its own PID namespace (it sees only its own processes, and all of them end with it), IPC and
  UTS namespaces, a new terminal session, and the network only if ``CULM_BASH_NETWORK`` is true
  (the default: package installs and ``git clone`` work; set it false for an offline sandbox).

Not confined: CPU, memory and disk use (the timeout bounds the time), and what the network
reaches when it is on.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from culm.errors import ConfigError
from culm.logs import get_logger
from culm.settings import SandboxMode, Settings

log = get_logger(__name__)

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/etc")
ETC_SECRETS = (
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/ssh",
    "/etc/ssl/private",
)
PROBE_TIMEOUT = 10.0


@dataclass(frozen=True, kw_only=True)
class Sandbox:
    """How bash commands run: ``kind`` is ``bwrap`` or ``none`` (what ``/health`` reports)."""

    kind: str = "none"
    bwrap: str = "bwrap"
    network: bool = True
    read_only: tuple[Path, ...] = ()
    reason: str = field(default="", compare=False)  # why there is none, when auto fell back

    @property
    def confined(self) -> bool:
        return self.kind == SandboxMode.BWRAP

    @property
    def home(self) -> str | None:
        """The ``HOME`` a command gets (None: culm's own)."""
        return "/tmp" if self.confined else None

    def wrap(self, command: Sequence[str], workspace: Path) -> list[str]:
        """``command`` as it is run: inside bwrap, or as it is."""
        if not self.confined:
            return list(command)
        return [self.bwrap, *self._arguments(workspace), "--", *command]

    def _arguments(self, workspace: Path) -> list[str]:
        args = ["--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc"]
        args += ["--unshare-uts", "--hostname", "culm"]
        if not self.network:
            args.append("--unshare-net")
        for path in SYSTEM_DIRS:
            args += _system_dir(path)
        for path in ETC_SECRETS:
            if os.path.isdir(path) and not os.path.islink(path):
                args += ["--tmpfs", path, "--remount-ro", path]
            elif os.path.lexists(path):
                args += ["--ro-bind", "/dev/null", path]
        args += _resolver()
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        for extra in (*_python_dirs(), *map(str, self.read_only)):
            args += ["--ro-bind-try", extra, extra]
        real = str(workspace)
        return [*args, "--bind", real, real, "--chdir", real]


NO_SANDBOX = Sandbox()


def sandbox_from(settings: Settings) -> Sandbox:
    """The sandbox ``settings`` ask for (``CULM_BASH_SANDBOX``, ``CULM_BASH_NETWORK``,
    ``CULM_BASH_READ_ONLY_PATHS``), checked: see :func:`choose_sandbox`."""
    return choose_sandbox(
        settings.bash_sandbox,
        network=settings.bash_network,
        read_only=settings.bash_read_only_paths,
    )


def choose_sandbox(
    mode: SandboxMode, *, network: bool = True, read_only: Sequence[Path] = ()
) -> Sandbox:
    """The sandbox ``mode`` asks for, after checking that bwrap works here (raises ConfigError
    for ``bwrap`` when it does not; ``auto`` then falls back to none, with a warning)."""
    if mode is SandboxMode.NONE:
        return Sandbox(kind="none", network=network, reason="CULM_BASH_SANDBOX=none")
    found = shutil.which("bwrap")
    sandbox = Sandbox(
        kind="bwrap",
        bwrap=found or "bwrap",
        network=network,
        read_only=tuple(Path(path).resolve() for path in read_only),
    )
    problem = "bwrap is not installed (Debian package bubblewrap)" if found is None else None
    problem = problem or _probe(sandbox)
    if problem is None:
        return sandbox
    if mode is SandboxMode.BWRAP:
        raise ConfigError(f"CULM_BASH_SANDBOX=bwrap: {problem}")
    log.warning("bash commands run unconfined", reason=problem)
    return Sandbox(kind="none", network=network, reason=problem)


@functools.cache
def _probe(sandbox: Sandbox) -> str | None:
    """Why bwrap cannot run a command here (e.g. no user namespaces), or None when it can.
    Asked once per process and sandbox: every Engine and tool registry would otherwise start
    bwrap again, blocking its caller for a few milliseconds each time."""
    with tempfile.TemporaryDirectory(prefix="culm-probe-") as workspace:
        command = sandbox.wrap(["/bin/sh", "-c", "exit 0"], Path(workspace).resolve())
        try:
            done = subprocess.run(
                command, capture_output=True, timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bwrap does not start: {exc}"
    if done.returncode != 0:
        said = " ".join(done.stderr.decode("utf-8", "replace").split()) or "no message"
        return f"bwrap does not work here (exit {done.returncode}: {said})"
    return None


def _system_dir(path: str) -> list[str]:
    if os.path.islink(path):
        return ["--symlink", os.readlink(path), path]
    if os.path.isdir(path):
        return ["--ro-bind", path, path]
    return []


def _python_dirs() -> list[str]:
    found = {os.path.realpath(prefix) for prefix in (sys.prefix, sys.base_prefix)}
    return sorted(path for path in found if not path.startswith(SYSTEM_DIRS))


def _resolver() -> list[str]:
    """``/etc/resolv.conf`` often links to a file under ``/run``: bind that one file too."""
    target = os.path.realpath("/etc/resolv.conf")
    if target.startswith("/etc/") or not os.path.exists(target):
        return []
    return ["--ro-bind", target, target]
