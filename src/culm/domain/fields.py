"""Naming the field of a validation error the way a client wrote it: ``trigger.expr``.

pydantic puts the tag of a discriminated union in an error's location (``trigger.cron.expr``
for ``{"trigger": {"type": "cron", "expr": …}}``); the client never wrote that ``cron``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from culm.errors import InvalidFieldError


def field_path(loc: Sequence[int | str], data: Any) -> str:
    """``loc`` as a dotted path, without the union tags that are not in ``data``."""
    parts: list[str] = []
    for part in loc:
        if isinstance(data, dict) and part not in data and data.get("type") == part:
            continue  # the tag of the union member that validated ``data``
        parts.append(str(part))
        data = _child(data, part)
    return ".".join(parts)


def _child(data: Any, part: int | str) -> Any:
    if isinstance(data, dict):
        return data.get(part)
    if isinstance(data, list | tuple) and isinstance(part, int) and 0 <= part < len(data):
        return data[part]
    return None


def invalid_field(exc: ValidationError, data: Any) -> InvalidFieldError:
    """The first error of ``exc`` (validating ``data``) as an :class:`InvalidFieldError`."""
    errors = exc.errors()
    first = errors[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return InvalidFieldError(field_path(first["loc"], data) or "body", message)
