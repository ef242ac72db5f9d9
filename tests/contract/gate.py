"""A tool that holds its run inside a tool call until the test lets it go."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from culm.tools.base import Tool, ToolContext


class GateTool(Tool):
    """Waits for :attr:`release`; :attr:`entered` is set once a call is inside, and
    :attr:`inside` counts the calls inside right now (:attr:`most` the highest it reached)."""

    name: ClassVar[str] = "gate"
    description: ClassVar[str] = "Wait at the gate."
    parameters: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}
    read_only: ClassVar[bool] = True

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.inside = 0
        self.most = 0

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        self.inside += 1
        self.most = max(self.most, self.inside)
        self.entered.set()
        try:
            await self.release.wait()
        finally:
            self.inside -= 1
        return "passed"
