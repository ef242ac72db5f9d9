"""A private PostgreSQL server for one test: its own data directory, port and socket.

The PostgreSQL restart test stops and starts a server; the shared one on 5432 serves every other
test (and other checkouts), so that test gets a cluster of its own: ``initdb`` into a temporary
directory, ``pg_ctl start`` on a free port of 127.0.0.1 (trust authentication), removed after.
As root (CI runs as root) the server runs as the ``postgres`` user (``runuser``), since
PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.api.conftest import free_port


def _bindir() -> Path | None:
    """Where initdb and pg_ctl are: PATH, else the newest Debian/Ubuntu install."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    return Path(versions[0]).parent if versions else None


class PrivateCluster:
    """``start()``/``stop()`` as often as needed; ``remove()`` stops it and deletes it all."""

    def __init__(self) -> None:
        bindir = _bindir()
        if bindir is None:
            raise FileNotFoundError("initdb/pg_ctl not found (PostgreSQL server binaries)")
        self._bin = bindir
        self._as_postgres = os.geteuid() == 0
        # Not under pytest's tmp_path: the postgres user must be able to enter it.
        self.dir = Path(tempfile.mkdtemp(prefix="culm-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self.dir.chmod(0o700)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8", "--locale=C")  # fmt: skip

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        command = [str(self._bin / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd=self.dir
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"),
                  "-w", "-t", "30", "start")  # fmt: skip

    def stop(self) -> None:
        """Fast shutdown: every connection is cut, as when a server restarts."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def remove(self) -> None:
        try:
            if self.running():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
