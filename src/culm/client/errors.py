"""What the client raises. Every failure is a :class:`~culm.errors.UserError` whose message is
meant to be shown as it is (one line):

    ServerUnreachable   the server cannot be reached, or the connection broke
    APIError            the server answered with an error; the message is the server's own
    ├── Unauthorized    401: names CULM_API_KEY
    ├── NotFound        404: an unknown run, session, schedule or agent
    └── WaitTimeout     408: a wait ran out of time; ``run`` is the run as it was then
"""

from __future__ import annotations

from typing import Any

from culm.errors import UserError

Json = dict[str, Any]


class ServerUnreachable(UserError):
    """No answer from the server: refused, timed out, or the connection broke."""


class APIError(UserError):
    """The server answered with an error status; the message is the server's."""

    def __init__(self, message: str, *, status: int, code: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.field = field


class Unauthorized(APIError):
    pass


class NotFound(APIError):
    pass


class WaitTimeout(APIError):
    def __init__(self, message: str, *, status: int, code: str, run: Json) -> None:
        super().__init__(message, status=status, code=code)
        self.run = run


def unreachable_message(base_url: str) -> str:
    return f"cannot reach the culm server at {base_url} (is `culm serve` running?)"
