"""culm's exceptions, one tree.

CulmError
├── UserError                  bad configuration or input; the message names the setting or field
│   ├── ConfigError            a setting is missing or invalid (e.g. OPENAI_API_KEY not set)
│   ├── InvalidFieldError      a field of a request is invalid; ``field`` names it
│   ├── UnknownModelError      a model name with an unknown provider or script
│   ├── UnknownToolError       a tool name that is not available
│   ├── NotFoundError          an unknown session or run id
│   ├── AlreadyRunningError    the session has an active run (carries its run_id)
│   ├── SessionBusyError       the session cannot be deleted while a run is active
│   ├── InputConflictError     an input request answered already, or whose run is not waiting
│   ├── ReadOnlyError          a change to what is defined elsewhere (a code- or config-defined agent)
│   └── AppLoadError           an app (``module:attr``, CULM_APP, entry point) cannot be loaded
│       └── ToolDefinitionError  (culm.tools.typed) a function that cannot be a tool
├── RunFailure                 a run ended in error; ``code`` is the error event's code
│   ├── ModelError             the model call failed
│   │   ├── ModelHTTPError     the provider answered with an HTTP error (status, retry_after)
│   │   │   ├── ModelAuthError         401/403: wrong or missing credentials
│   │   │   └── ModelRequestError      400/404/422: the provider refused the request
│   │   ├── ModelConnectionError       connect/read failure, reset, a stream cut short
│   │   └── ModelStallError            no chunk within the idle timeout
│   ├── LimitExceededError     max rounds, or a similar engine limit
│   │   └── BudgetExceededError        the run spent its max_tokens / max_cost_usd
│   ├── ContextOverflowError   the request does not fit the model's window, even compacted
│   └── MCPServerError         an MCP server could not be started or reached
├── EngineClosedError          the engine is shutting down or closed
├── StorageUnavailableError    the store keeps failing (disk full, database unreachable)
├── LeaseLostError             a fenced write: the writer no longer owns the run (owner/epoch)
└── ToolFailure                raised by a tool: reported to the model as an error result
    └── ToolTimeoutError       the tool ran past its timeout
"""

from __future__ import annotations

from typing import Any


class CulmError(Exception):
    """Base of every culm exception."""


class UserError(CulmError):
    """A mistake in configuration or input. The message is meant for the user as it is."""


class ConfigError(UserError):
    pass


class InvalidFieldError(UserError):
    """A field of a request is invalid; ``field`` is its dotted path (``trigger.expr``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class UnknownModelError(UserError):
    pass


class UnknownToolError(UserError):
    pass


class NotFoundError(UserError):
    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident!r} not found")
        self.kind = kind
        self.ident = ident


class AlreadyRunningError(UserError):
    def __init__(self, session_id: str, run_id: str) -> None:
        super().__init__(f"session {session_id!r} already has an active run {run_id!r}")
        self.session_id = session_id
        self.run_id = run_id


class SessionBusyError(UserError):
    def __init__(self, session_id: str, run_id: str) -> None:
        super().__init__(f"session {session_id!r} has an active run {run_id!r}")
        self.session_id = session_id
        self.run_id = run_id


class ReadOnlyError(UserError):
    """A change to something defined elsewhere (code or config.toml); the message says where."""


class AppLoadError(UserError):
    """An app cannot be loaded; the message names the app, the module and the problem."""


class SessionChangedError(SessionBusyError):
    """A compaction outside a run found the session changed while it worked: a run (``run_id``)
    came and went meanwhile. Nothing was stored; compacting again works on the new transcript."""

    def __init__(self, session_id: str, run_id: str) -> None:
        super().__init__(session_id, run_id)
        self.args = (f"session {session_id!r} changed while it was compacted (run {run_id!r})",)


class InputConflictError(UserError):
    """An answer to an input request that cannot be taken: the request was answered already
    (differently: ``request`` carries the first answer) or its run is not waiting."""

    def __init__(self, request: Any, message: str) -> None:
        super().__init__(f"input request {request.request_id!r}: {message}")
        self.request = request


class RunFailure(CulmError):
    code = "run_failed"


class ModelError(RunFailure):
    code = "model_error"
    retryable = False


class ModelHTTPError(ModelError):
    code = "model_http_error"

    def __init__(self, message: str, *, status: int, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.retryable = status == 429 or status >= 500


class ModelAuthError(ModelHTTPError):
    code = "model_auth_error"


class ModelRequestError(ModelHTTPError):
    code = "model_request_error"


class ModelConnectionError(ModelError):
    code = "model_connection_error"
    retryable = True


class ModelStallError(ModelError):
    code = "model_stalled"
    retryable = True


class LimitExceededError(RunFailure):
    code = "limit_exceeded"


class BudgetExceededError(LimitExceededError):
    """A round took the run (its sub-agents included) past its ``max_tokens`` or
    ``max_cost_usd``; the run ends after that round."""

    code = "budget_exceeded"


class ContextOverflowError(RunFailure):
    """The provider refused the request as too long, and compacting it did not make it fit;
    the message says what was tried."""

    code = "context_overflow"


class MCPServerError(RunFailure):
    """An MCP server could not be started or reached. A tool call reports it to the model as an
    error result; a run that needs the server's tools to start fails with it."""

    code = "mcp_server_error"


class EngineClosedError(CulmError):
    pass


class StorageUnavailableError(CulmError):
    """The store failed to read or write (disk full, database unreachable). Runs whose events
    it cannot take past ``CULM_STORAGE_RETRY_WINDOW`` end ``error`` with this code."""

    code = "storage_unavailable"


class LeaseLostError(CulmError):
    """A write for a run by a worker that no longer owns it: the run's (owner, epoch) is not
    the writer's any more (its lease expired and the run was taken over, released or ended).
    Nothing was written; the worker must stop the run locally, writing nothing more."""

    code = "lease_lost"

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r}: lease lost (taken over, released or ended)")
        self.run_id = run_id


class ToolFailure(CulmError):
    """A tool could not do what was asked; the message goes to the model as the result."""


class ToolTimeoutError(ToolFailure):
    pass


def describe(exc: BaseException) -> str:
    """An exception as one line for a message: its text, or its type's name when it has none
    (many transport errors have no text)."""
    return str(exc) or type(exc).__name__
