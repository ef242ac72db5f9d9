"""culm: an agent execution engine.

Runs LLM agents as background runs, streams every run's events live with exact replay, cancels
runs wherever they wait, and records what they used. Start with :class:`culm.Engine`.
"""

from culm._version import __version__
from culm.domain.events import RunEvent, event_from_json, event_to_json
from culm.domain.models import (
    AssistantMessage,
    Message,
    MultitaskPolicy,
    Run,
    RunStatus,
    RunTrigger,
    Session,
    SessionKind,
    ToolCall,
    ToolResultMessage,
    Usage,
    UserMessage,
)
from culm.errors import (
    AlreadyRunningError,
    ConfigError,
    CulmError,
    NotFoundError,
    RunFailure,
    UnknownModelError,
    UnknownToolError,
    UserError,
)
from culm.providers.scripted import Script
from culm.services import Engine
from culm.settings import Settings
from culm.tools.base import Tool, ToolContext

__all__ = [
    "AlreadyRunningError",
    "AssistantMessage",
    "ConfigError",
    "CulmError",
    "Engine",
    "Message",
    "MultitaskPolicy",
    "NotFoundError",
    "Run",
    "RunEvent",
    "RunFailure",
    "RunStatus",
    "RunTrigger",
    "Script",
    "Session",
    "SessionKind",
    "Settings",
    "Tool",
    "ToolCall",
    "ToolContext",
    "ToolResultMessage",
    "UnknownModelError",
    "UnknownToolError",
    "Usage",
    "UserError",
    "UserMessage",
    "__version__",
    "event_from_json",
    "event_to_json",
]
