"""culm's runner for bench/peers.py: the embedded Engine (SQLite, WAL, every event stored), one
headless session per run, and one subscriber per run that reads every event.

Runs under culm's .venv::

    .venv/bin/python bench/peers/run_culm.py seq --base-url http://127.0.0.1:9100/v1
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import harness

import culm


class NoopTool(culm.Tool):
    """The task's tool: returns at once."""

    name: ClassVar[str] = "noop"
    description: ClassVar[str] = "Does nothing and returns 'ok'."
    parameters: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}
    read_only: ClassVar[bool] = True

    async def run(self, arguments: dict[str, Any], ctx: culm.ToolContext) -> str:
        return "ok"


class Culm:
    name = "culm"
    source = str(Path(culm.__file__).parent)  # another checkout's with --culm-src

    def __init__(self) -> None:
        self.engine: culm.Engine | None = None
        self.home = tempfile.TemporaryDirectory(prefix="culm-peers-")

    async def start(self, args: argparse.Namespace) -> None:
        os.environ["OPENAI_BASE_URL"] = args.base_url
        os.environ["OPENAI_API_KEY"] = "bench"
        os.environ["CULM_HOME"] = self.home.name
        # Every run of a scenario executes at once, as every peer's do (the default is 64).
        concurrency = max(64, args.concurrency, args.runs if args.scenario == "parked" else 0)
        os.environ["CULM_WORKER_CONCURRENCY"] = str(concurrency)
        self.engine = culm.Engine(tools=[NoopTool()])
        await self.engine.start()

    async def run_once(self, on_token: harness.OnToken) -> None:
        engine = self.engine
        assert engine is not None
        run = await engine.run(
            "Call noop, then answer.",
            model="openai:gpt-bench",
            tools=["noop"],
            workspace=self.home.name,
        )
        last = ""
        async for event in engine.subscribe(run.run_id):
            if event.type == "token":
                on_token(event.content)
            last = event.type
        if last != "complete":
            raise RuntimeError(f"run {run.run_id} ended with {last!r}")

    def discard(self) -> None:
        """Before a parked sample's process leaves without closing its runs: its home."""
        self.home.cleanup()

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.aclose()
        self.home.cleanup()


if __name__ == "__main__":
    harness.main(Culm())
