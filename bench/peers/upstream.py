"""The fake upstream of bench/peers.py: bench/fake_openai.py in its own process, so that its CPU
never shows in a system's figures, with the two-round tool task on (``--tool noop``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

FAKE = Path(__file__).resolve().parent.parent / "fake_openai.py"


class Upstream:
    """``mode`` names it in the results: ``write`` (the answer in one write), ``stream`` (a
    token every ``delay_ms``), ``parked`` (nothing for ``park_s``)."""

    def __init__(self, mode: str, tokens: int, delay_ms: float, park_s: float = 0.0) -> None:
        self.mode = mode
        command = [sys.executable, str(FAKE), "--port", "0", "--tool", "noop"]
        command += ["--chunks", str(tokens), "--chunk-delay-ms", str(delay_ms)]
        command += ["--park-s", str(park_s)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # "fake OpenAI upstream on http://…/v1"
        if "http://" not in line:
            self.process.kill()
            raise RuntimeError(f"the fake upstream did not start: {line!r}")
        self.base_url = line.split()[-1]

    def stats(self) -> dict[str, Any]:
        url = self.base_url.removesuffix("/v1") + "/stats"
        with urllib.request.urlopen(url, timeout=10) as answer:
            stats: dict[str, Any] = json.load(answer)
        return stats

    def drained(self, timeout: float = 30.0) -> int:
        """Wait until the upstream holds no parked request (the last process's have gone: it
        exited, the kernel closed its connections, the upstream saw them close), at most
        ``timeout`` seconds; what it still holds."""
        deadline = time.monotonic() + timeout
        while (held := int(self.stats()["parked_now"])) and time.monotonic() < deadline:
            time.sleep(0.05)
        return held

    def cpu_seconds(self) -> float:
        """The upstream's own CPU so far: shared by every system, so it is reported apart."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> Upstream:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
