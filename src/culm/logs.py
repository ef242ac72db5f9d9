"""culm's loggers: structlog on top of the standard library's ``logging``.

A library must not print to stdout: records go to the ``culm.*`` stdlib loggers, so an
application decides where they go (without any set-up, Python prints warnings and worse to
stderr). Key/value context is rendered into the message.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog


def _render(_logger: Any, _method: str, event_dict: dict[str, Any]) -> str:
    """``event key=value …``; ``logging`` itself appends the traceback of ``.exception()``."""
    event = event_dict.pop("event", "")
    event_dict.pop("exc_info", None)
    return " ".join([str(event), *(f"{key}={value}" for key, value in event_dict.items())])


_PROCESSORS: list[Any] = [_render]


def get_logger(name: str) -> Any:
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=_PROCESSORS,
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
