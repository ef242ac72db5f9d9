"""``ask_user``: the model asks the person a question (opt-in: only sessions that name it).

The loop never runs it: a call of it parks the run with a ``question`` request, and the
person's answer becomes the call's result (see :mod:`culm.loop.approval`)."""

from __future__ import annotations

from typing import Any, ClassVar

from culm.errors import ToolFailure
from culm.input.policy import ASK_USER
from culm.tools.base import Tool, ToolContext


class AskUserTool(Tool):
    name: ClassVar[str] = ASK_USER
    description: ClassVar[str] = (
        "Ask the user a question and wait for the answer, which is returned as this tool's "
        "result. Use it when you need a decision or a fact only the user has; give `choices` "
        "when the answer is one of a few options."
    )
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "question": {"type": "string", "description": "The question, self-contained."},
            "choices": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["question"],
        "additionalProperties": False,
    }

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        raise ToolFailure("ask_user is answered by a person, never run as a tool")
