"""Argument checks for the built-in tools.

The model's arguments are checked against the tool's JSON schema only loosely (by the provider, if
at all), so each tool reads its fields through these helpers: a missing, unexpected or wrong-typed
field becomes a :class:`~culm.errors.ToolFailure` that names the field, which the model can act on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from culm.errors import ToolFailure


def check_fields(arguments: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Refuse fields the schema does not declare and required fields that are missing."""
    known: Mapping[str, Any] = schema.get("properties", {})
    unexpected = sorted(set(arguments) - set(known))
    if unexpected:
        names = ", ".join(repr(name) for name in unexpected)
        raise ToolFailure(f"unexpected argument {names} (expected: {', '.join(known)})")
    for name in schema.get("required", ()):
        if arguments.get(name) is None:
            raise ToolFailure(f"missing required argument {name!r}")


def get_str(arguments: Mapping[str, Any], name: str, default: str | None = None) -> str:
    """A string field; ``default`` is used when it is absent or null."""
    value = arguments.get(name)
    if value is None:
        if default is None:
            raise ToolFailure(f"missing required argument {name!r}")
        return default
    if not isinstance(value, str):
        raise ToolFailure(f"argument {name!r} must be a string, got {_kind(value)}")
    return value


def get_optional_str(arguments: Mapping[str, Any], name: str) -> str | None:
    if arguments.get(name) is None:
        return None
    return get_str(arguments, name)


def get_int(arguments: Mapping[str, Any], name: str, default: int, *, minimum: int) -> int:
    """An integer field (an integral float such as ``10.0`` is accepted)."""
    value = arguments.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ToolFailure(f"argument {name!r} must be an integer, got {_kind(value)}")
    if value < minimum:
        raise ToolFailure(f"argument {name!r} must be at least {minimum}, got {value}")
    return value


def get_positive_number(arguments: Mapping[str, Any], name: str) -> float | None:
    value = arguments.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolFailure(f"argument {name!r} must be a number, got {_kind(value)}")
    if not value > 0:
        raise ToolFailure(f"argument {name!r} must be greater than 0, got {value}")
    return float(value)


def get_bool(arguments: Mapping[str, Any], name: str, default: bool = False) -> bool:
    value = arguments.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ToolFailure(f"argument {name!r} must be true or false, got {_kind(value)}")
    return value


def _kind(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names |= {list: "an array", dict: "an object"}
    return names.get(type(value), type(value).__name__)
