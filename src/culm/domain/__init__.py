"""The words of culm (sessions, messages, runs, run events) as plain typed values.

The domain depends on nothing else in culm; every other layer imports from here.
"""

from culm.domain.events import (
    CRITICAL_EVENT_TYPES,
    TERMINAL_EVENT_TYPES,
    RunEvent,
    event_from_json,
    event_to_json,
)
from culm.domain.models import (
    ACTIVE_RUN_STATUSES,
    TERMINAL_RUN_STATUSES,
    AssistantMessage,
    Message,
    MultitaskPolicy,
    Run,
    RunStatus,
    RunTrigger,
    Session,
    SessionKind,
    ToolCall,
    ToolPhase,
    ToolResultMessage,
    Usage,
    UserMessage,
)
from culm.domain.time import new_id, utc_now

__all__ = [
    "ACTIVE_RUN_STATUSES",
    "CRITICAL_EVENT_TYPES",
    "TERMINAL_EVENT_TYPES",
    "TERMINAL_RUN_STATUSES",
    "AssistantMessage",
    "Message",
    "MultitaskPolicy",
    "Run",
    "RunEvent",
    "RunStatus",
    "RunTrigger",
    "Session",
    "SessionKind",
    "ToolCall",
    "ToolPhase",
    "ToolResultMessage",
    "Usage",
    "UserMessage",
    "event_from_json",
    "event_to_json",
    "new_id",
    "utc_now",
]
