"""culm: an agent execution engine.

Runs LLM agents as background runs, streams every run's events live with exact replay, cancels
runs wherever they wait, and records what they used. Start with :class:`culm.Engine`.
"""

from typing import TYPE_CHECKING, Any

from culm._version import __version__

if TYPE_CHECKING:
    from culm.agents.models import Agent, AgentDefinition, SessionSettings
    from culm.apps.app import App
    from culm.client import Client, SyncClient
    from culm.domain.compaction import Compaction
    from culm.domain.events import RunEvent, event_from_json, event_to_json
    from culm.domain.input import InputAnswer, InputRequest
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
        AppLoadError,
        ConfigError,
        CulmError,
        InputConflictError,
        NotFoundError,
        ReadOnlyError,
        RunFailure,
        ToolFailure,
        UnknownModelError,
        UnknownToolError,
        UserError,
    )
    from culm.providers.scripted import Script
    from culm.services import Engine
    from culm.settings import Settings
    from culm.tools.base import Tool, ToolContext
    from culm.tools.typed import FunctionTool, ToolDefinitionError, tool

# Loaded on first use, so `import culm` (and the CLI's start) stays fast.
_LAZY = {
    "Agent": "culm.agents.models",
    "AgentDefinition": "culm.agents.models",
    "SessionSettings": "culm.agents.models",
    "App": "culm.apps.app",
    "Client": "culm.client",
    "SyncClient": "culm.client",
    "Compaction": "culm.domain.compaction",
    "RunEvent": "culm.domain.events",
    "event_from_json": "culm.domain.events",
    "event_to_json": "culm.domain.events",
    "InputAnswer": "culm.domain.input",
    "InputRequest": "culm.domain.input",
    "AssistantMessage": "culm.domain.models",
    "Message": "culm.domain.models",
    "MultitaskPolicy": "culm.domain.models",
    "Run": "culm.domain.models",
    "RunStatus": "culm.domain.models",
    "RunTrigger": "culm.domain.models",
    "Session": "culm.domain.models",
    "SessionKind": "culm.domain.models",
    "ToolCall": "culm.domain.models",
    "ToolResultMessage": "culm.domain.models",
    "Usage": "culm.domain.models",
    "UserMessage": "culm.domain.models",
    "AlreadyRunningError": "culm.errors",
    "ConfigError": "culm.errors",
    "CulmError": "culm.errors",
    "InputConflictError": "culm.errors",
    "NotFoundError": "culm.errors",
    "RunFailure": "culm.errors",
    "ToolFailure": "culm.errors",
    "UnknownModelError": "culm.errors",
    "UnknownToolError": "culm.errors",
    "UserError": "culm.errors",
    "AppLoadError": "culm.errors",
    "ReadOnlyError": "culm.errors",
    "Script": "culm.providers.scripted",
    "Engine": "culm.services",
    "Settings": "culm.settings",
    "Tool": "culm.tools.base",
    "ToolContext": "culm.tools.base",
    "FunctionTool": "culm.tools.typed",
    "ToolDefinitionError": "culm.tools.typed",
    "tool": "culm.tools.typed",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'culm' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Agent",
    "AgentDefinition",
    "App",
    "Client",
    "SyncClient",
    "SessionSettings",
    "AlreadyRunningError",
    "AppLoadError",
    "AssistantMessage",
    "ReadOnlyError",
    "Compaction",
    "ConfigError",
    "CulmError",
    "Engine",
    "InputAnswer",
    "InputConflictError",
    "InputRequest",
    "FunctionTool",
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
    "ToolDefinitionError",
    "ToolFailure",
    "ToolResultMessage",
    "UnknownModelError",
    "UnknownToolError",
    "Usage",
    "UserError",
    "UserMessage",
    "__version__",
    "event_from_json",
    "event_to_json",
    "tool",
]
