"""``compact_context``: an opt-in tool with which the model asks for its context to be compacted.

The tool only answers; the agent loop sees the call among the round's results and compacts
before the next model call (``trigger: manual``), as it would for ``engine.compact``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

from culm.tools.base import Tool, ToolContext

COMPACT_TOOL: Final = "compact_context"


class CompactContextTool(Tool):
    name = COMPACT_TOOL
    description = (
        "Compact your context window: old tool outputs are shortened and the older part of the "
        "conversation is replaced by a summary before your next turn. Use it when the "
        "conversation is long and its early details are no longer needed verbatim."
    )
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {},
        "required": [],
        "additionalProperties": False,
    }

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        return "The conversation will be compacted before your next turn."
