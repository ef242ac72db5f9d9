"""The reaper: a small process between culm and a command it starts, so that nothing the command
starts outlives it.

    python -I -S reaper.py PARENT_PID GRACE COMMAND [ARG ...]

It is run as a script (stdlib only, no culm import: it starts in ~15 ms) by
:func:`culm.tools.process.reaped`. It makes itself a *child subreaper*
(``PR_SET_CHILD_SUBREAPER``), so every descendant of the command that is orphaned — a
``setsid`` or double-forked daemon included — becomes its child instead of init's and can be
found; and it asks for SIGTERM when culm dies (``PR_SET_PDEATHSIG``), ``kill -9`` included.

It runs COMMAND as its child and waits. When COMMAND exits, or the reaper gets SIGTERM, SIGINT or
SIGHUP (a cancel, culm's death), it ends every process still below it: SIGTERM, then SIGKILL
after GRACE seconds, reaping them all. Then it exits as COMMAND did (the same exit code, or
killed by the same signal), so to culm it looks like COMMAND itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
WATCHED = {*STOP_SIGNALS, signal.SIGCHLD}
"""Blocked from the start and taken only by ``sigwaitinfo``: no signal ever interrupts the reaper,
so a second stop signal (a cancel and culm's death at once) cannot end it halfway through ending
what is below it, which would leave that to init."""
KILL_DEADLINE = 5.0
"""Seconds to keep killing and reaping after SIGKILL before giving up (a process stuck in the
kernel cannot be reaped)."""


def _prctl(option: int, value: int) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, value, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # not Linux: the process group is all there is
        return False


def _descendants(root: int) -> list[int]:
    """Every live process below ``root``, found through the parent pids in /proc."""
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as file:
                fields = file.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if fields and fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(name))
    found: list[int] = []
    todo = [root]
    while todo:
        for pid in children.get(todo.pop(), ()):
            found.append(pid)
            todo.append(pid)
    return found


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _reap(main: int, status: int | None) -> tuple[int | None, bool]:
    """Reap every exited child; return the main child's status once it is known, and whether
    any child is left (alive: nothing below us can be, when none is, since every orphan below
    us becomes our child)."""
    while True:
        try:
            pid, code = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status, False
        if pid == 0:
            return status, True
        if pid == main:
            status = code


def _end_all(main: int, status: int | None, grace: float) -> int | None:
    """SIGTERM everything below us, SIGKILL what is left after ``grace``, reap it all."""
    me = os.getpid()
    _signal_all(_descendants(me), signal.SIGTERM)
    status = _settle(me, main, status, time.monotonic() + grace, None)
    return _settle(me, main, status, time.monotonic() + KILL_DEADLINE, signal.SIGKILL)


def _settle(
    me: int, main: int, status: int | None, deadline: float, sig: signal.Signals | None
) -> int | None:
    """Reap until nothing lives below ``me`` (or ``deadline``), sending ``sig`` to what does.

    "Nothing below" is that we have no child left, not that a scan of /proc found none: a scan
    is no snapshot, and misses a process forked while it reads (its pid below the directory
    already read once pids wrap) whose parent then exits; ending then would leave it to init.
    """
    while True:
        status, children = _reap(main, status)
        if not children or time.monotonic() >= deadline:
            return status
        below = _descendants(me)
        if sig is not None:
            _signal_all(below, sig)
        time.sleep(0.005)


def _exec(command: list[str], mask: set[int | signal.Signals]) -> None:
    for sig in (*STOP_SIGNALS, signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # the mask is inherited through exec
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        os.write(2, f"culm: cannot run {command[0]!r}: {exc.strerror}\n".encode())
    os._exit(127)


def _exit_like(status: int | None) -> None:
    if status is None:
        os._exit(1)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig != signal.SIGKILL:
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})  # held, if it is a stop signal
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status))


def _wait_for(main: int) -> int | None:
    """The command's status once it exits, or None when a stop signal comes first."""
    while True:
        status, _ = _reap(main, None)
        if status is not None:
            return status
        # A child that exits meanwhile leaves SIGCHLD pending (it is blocked): no wake-up is lost.
        if signal.sigwaitinfo(WATCHED).si_signo != signal.SIGCHLD:
            return None


def main(argv: list[str]) -> None:
    parent, grace, command = int(argv[1]), float(argv[2]), argv[3:]
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # not SIG_IGN, which reaps children unasked
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    main_pid = 0
    status: int | None = None
    if os.getppid() == parent:  # else culm died before the line above: start nothing
        main_pid = os.fork()
        if main_pid == 0:
            _exec(command, mask)
        status = _wait_for(main_pid)
    _exit_like(_end_all(main_pid, status, grace))


if __name__ == "__main__":
    main(sys.argv)
