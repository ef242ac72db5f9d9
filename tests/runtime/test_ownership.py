"""Which machine a process runs on: host name, boot id and PID namespace, read from real /proc,
compared with real child processes (one in a PID namespace of its own, where ``unshare`` works)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from culm.runtime import ownership
from culm.runtime.ownership import boot_id, pid_alive, pid_namespace, same_machine

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# What a child process reports about itself.
REPORT = (
    "import json, socket; from culm.runtime.ownership import boot_id, pid_namespace; "
    "print(json.dumps([socket.gethostname(), boot_id(), pid_namespace()]))"
)
# A child that waits for its stdin, any signal's default action restored (under nohup SIGHUP
# is ignored, and one that ended it would go unnoticed).
CHILD_WAITS = (
    "import signal, sys; [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGHUP, signal.SIGINT)]; "
    "sys.stdin.read()"
)
UNSHARE_PID = ["unshare", "--pid", "--fork", "--mount-proc"]


def _child(*prefix: str) -> tuple[str, str | None, str | None]:
    done = subprocess.run(
        [*prefix, sys.executable, "-c", REPORT],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    host, boot, namespace = json.loads(done.stdout)
    return host, boot, namespace


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run([*UNSHARE_PID, "true"], capture_output=True, timeout=30, check=False)
    return done.returncode == 0


needs_unshare = pytest.mark.skipif(
    not _unshare_works(), reason="unshare --pid is not allowed on this machine"
)


def test_boot_id_is_the_kernels() -> None:
    found = boot_id()
    assert found is not None and UUID.fullmatch(found)
    assert found == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_pid_namespace_is_the_inode_readlink_names() -> None:
    found = pid_namespace()
    assert found is not None and found.isdigit()
    assert os.readlink("/proc/self/ns/pid") == f"pid:[{found}]"


def test_a_child_process_is_on_the_same_machine() -> None:
    child = _child()
    assert child == (socket.gethostname(), boot_id(), pid_namespace())
    assert same_machine(*child)


@needs_unshare
def test_a_child_in_another_pid_namespace_is_not_the_same_machine() -> None:
    host, boot, namespace = _child(*UNSHARE_PID)
    assert (host, boot) == (socket.gethostname(), boot_id())  # same host, same boot …
    assert namespace is not None and namespace != pid_namespace()  # … other pids
    assert not same_machine(host, boot, namespace)


@needs_unshare
def test_two_children_in_pid_namespaces_of_their_own_differ() -> None:
    # Both alive at once: a namespace's inode number is free again once its last process is
    # gone, so a second child started after the first ended may well be given the same number.
    command = [*UNSHARE_PID, sys.executable, "-c", REPORT + "; import sys; sys.stdin.read()"]
    children = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        first, second = (json.loads(child.stdout.readline()) for child in children)  # type: ignore[union-attr]
    finally:
        for child in children:
            child.communicate(timeout=30)
    assert first[2] is not None and first[2] != second[2]


def test_any_field_that_differs_or_is_unknown_means_another_machine() -> None:
    host, boot, namespace = socket.gethostname(), boot_id(), pid_namespace()
    assert same_machine(host, boot, namespace)
    assert not same_machine(host + "x", boot, namespace)
    assert not same_machine(host, "00000000-0000-0000-0000-000000000000", namespace)
    assert not same_machine(host, boot, "1")
    assert not same_machine(host, None, namespace)
    assert not same_machine(host, boot, None)


def test_pid_alive_until_the_process_is_reaped() -> None:
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", CHILD_WAITS], stdin=subprocess.PIPE)
    try:
        assert pid_alive(child.pid)
    finally:
        child.communicate(timeout=30)
    assert child.returncode == 0, "asking sent the process no signal that ends it"
    assert not pid_alive(child.pid)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root")
def test_a_process_this_user_may_not_signal_is_alive() -> None:
    # As another user, signalling pid 1 (root's) is refused: the process exists all the same.
    # The child imports the culm this test imports (a mutated copy under mutation testing).
    check = "from culm.runtime.ownership import pid_alive; print(pid_alive(1))"
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    done = subprocess.run(
        [*nobody, sys.executable, "-c", check],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(ownership.__file__).parents[2])},
    )
    assert done.stdout.strip() == "True"
