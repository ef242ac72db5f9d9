"""The model's view of a transcript: the stored messages as the latest compaction shows them.

Pure and deterministic: the same messages and compaction always give the same view, so the
view survives runs and restarts without being stored itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from culm.domain.compaction import Compaction
from culm.domain.models import Message, ToolResultMessage, UserMessage

SUMMARY_HEADER = "[Summary of the earlier conversation, written when it was compacted]\n"


def summary_message(summary: str) -> UserMessage:
    return UserMessage(content=SUMMARY_HEADER + summary)


def elide(text: str, head: int, tail: int) -> str:
    """``text`` with its middle cut out, and a marker saying how much."""
    cut = len(text) - head - tail
    if cut <= 0:
        return text
    marker = f"\n[… {cut} characters of this tool output elided to save context …]\n"
    return text[:head] + marker + text[len(text) - tail :]


def shown(message: Message, index: int, compaction: Compaction | None) -> Message:
    """One stored message as the view shows it."""
    if compaction is None or not isinstance(message, ToolResultMessage):
        return message
    cut = compaction.elided.get(index)
    if cut is None:
        return message
    return message.model_copy(update={"content": elide(message.content, *cut)})


def model_view(messages: Sequence[Message], compaction: Compaction | None) -> list[Message]:
    if compaction is None:
        return list(messages)
    view: list[Message] = []
    start = min(compaction.summary_end, len(messages))
    if compaction.summary is not None and start > 0:
        view.append(summary_message(compaction.summary))
        view.extend(messages[i] for i in compaction.kept if i < start)
    view.extend(shown(messages[i], i, compaction) for i in range(start, len(messages)))
    return view
