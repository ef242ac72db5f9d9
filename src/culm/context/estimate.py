"""An offline estimate of a prompt's size in tokens.

No tokenizer ships with culm (their vocabularies are megabytes, and every provider's differs):
the estimate is a heuristic, calibrated per run against what the provider reports (see
:class:`~culm.context.budget.PromptMeter`). Four characters per token is what the OpenAI and
Anthropic tokenizers average on English prose and code; JSON-heavy tool output is a little
denser, which the calibration absorbs. Each message also costs a few tokens of framing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from culm.domain.models import AssistantMessage, Message, ToolResultMessage
from culm.providers.base import ToolSpec

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4  # role and framing tokens per message
TOOL_CALL_OVERHEAD = 8  # id, name and framing per tool call


def text_tokens(text: str) -> int:
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def message_tokens(message: Message) -> int:
    tokens = MESSAGE_OVERHEAD + text_tokens(message.content)
    if isinstance(message, AssistantMessage):
        tokens += text_tokens(message.reasoning)
        for call in message.tool_calls:
            tokens += TOOL_CALL_OVERHEAD + text_tokens(call.name) + text_tokens(call.arguments)
    elif isinstance(message, ToolResultMessage):
        tokens += TOOL_CALL_OVERHEAD
    return tokens


def messages_tokens(messages: Iterable[Message]) -> int:
    return sum(message_tokens(message) for message in messages)


def tools_tokens(tools: Iterable[ToolSpec]) -> int:
    return sum(
        TOOL_CALL_OVERHEAD + text_tokens(t.name + t.description) + text_tokens(str(t.parameters))
        for t in tools
    )


def request_tokens(
    system_prompt: str | None, messages: Sequence[Message], tools: Iterable[ToolSpec] = ()
) -> int:
    """The estimated prompt tokens of a whole request."""
    system = MESSAGE_OVERHEAD + text_tokens(system_prompt) if system_prompt else 0
    return system + messages_tokens(messages) + tools_tokens(tools)
