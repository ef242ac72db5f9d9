"""Text that every backend can store, the same way on each.

PostgreSQL cannot store NUL (``\\u0000``) in text or JSONB, and no UTF-8 database can store a lone
surrogate (``\\ud800``: JSON may spell one, Unicode has no such character). So:

- **input** (request bodies, the Python API's schedules) is refused when it holds either, or is
  nested deeper than :data:`MAX_DEPTH`: :func:`find_problem` names the field at fault;
- **what runs produce** (a model's text, a tool's output, an error message) is never refused:
  :func:`storable` replaces each NUL and lone surrogate with U+FFFD (``�``), as a UTF-8 decoder
  does with bytes it cannot read, on both backends: the store applies it to every value that it
  writes through SQLAlchemy (see :mod:`culm.storage.dialect`); JSON bodies go through
  :func:`model_json`; SQLite's batch writes (``storage/rowwriter.py``) replace lone surrogates
  only (a NUL is storable there, and looking for it would cost every batch).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from culm.errors import InvalidFieldError

# Containers (objects, arrays) inside one another in a request body's field, at most.
MAX_DEPTH = 32
REPLACEMENT = "\ufffd"

_SURROGATE = re.compile("[\ud800-\udfff]")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def text_problem(text: str) -> str | None:
    """What makes ``text`` unstorable, or None."""
    if "\x00" in text:
        return "contains NUL (\\u0000), which culm does not store"
    if not text.isascii() and _SURROGATE.search(text) is not None:
        return "contains a lone surrogate (\\ud800-\\udfff), which is not Unicode text"
    return None


def find_problem(data: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first (dotted path, message) in a request body ``data`` that culm would refuse: text
    (values and keys) with NUL or a lone surrogate, containers nested over :data:`MAX_DEPTH`."""
    stack: list[tuple[str, Any, int]] = [
        (_name(str(key)), value, 0) for key, value in reversed(list(data.items()))
    ]
    for key in data:
        if isinstance(key, str) and (problem := text_problem(key)) is not None:
            return "body", f"a field name {problem}"
    while stack:
        path, value, depth = stack.pop()
        if isinstance(value, str):
            problem = text_problem(value)
            if problem is not None:
                return path, problem
            continue
        if isinstance(value, Mapping):
            children = list(value.items())
        elif isinstance(value, list | tuple):
            children = list(enumerate(value))
        else:
            continue
        if depth >= MAX_DEPTH:
            field = path.split(".", 1)[0]
            return field, f"is nested deeper than {MAX_DEPTH} levels"
        for key, child in reversed(children):
            if isinstance(key, str) and (problem := text_problem(key)) is not None:
                return path, f"a key {problem}"
            stack.append((f"{path}.{_name(str(key))}", child, depth + 1))
    return None


def refuse_unstorable(data: Any) -> Any:
    """``data`` (a request body) as it is; :class:`InvalidFieldError` naming the field when
    :func:`find_problem` finds one. For ``model_validator(mode="before")``: it runs before the
    fields are validated, so the error names the whole path (``run_config.message``)."""
    if isinstance(data, Mapping):
        found = find_problem(data)
        if found is not None:
            raise InvalidFieldError(*found)
    return data


def _name(key: str) -> str:
    """A key as it may appear in a path (never with the characters that are refused)."""
    return key if text_problem(key) is None else repr(key)[1:-1]


def storable(text: str) -> str:
    """``text`` with each NUL and lone surrogate replaced by U+FFFD (a pair of surrogates that
    makes one character becomes that character)."""
    if text.isascii():
        if "\x00" not in text:
            return text
        return text.replace("\x00", REPLACEMENT)
    if _UNSTORABLE.search(text) is None:
        return text
    if _SURROGATE.search(text) is not None:
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text.replace("\x00", REPLACEMENT)


def storable_value(value: Any) -> Any:
    """A JSON-shaped value with :func:`storable` applied to every string in it (keys too); the
    value itself when nothing needs replacing."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, Mapping):
        items = [
            (storable(str(k)) if isinstance(k, str) else k, storable_value(v))
            for k, v in value.items()
        ]
        return dict(items)
    if isinstance(value, list | tuple):
        return [storable_value(item) for item in value]
    return value


def storable_parameters(value: Any) -> Any:
    """A driver's parameters (a sequence or mapping, or a sequence of them for executemany)
    with every string made storable; the same object when none needs it."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, list | tuple):
        items = [storable_parameters(item) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, Mapping):
        mapping = {key: storable_parameters(item) for key, item in value.items()}
        if all(mapping[key] is item for key, item in value.items()):
            return value
        return mapping
    return value


def model_json(model: BaseModel) -> str:
    """``model.model_dump_json()``; for text with a lone surrogate (which has no UTF-8 form: a
    model's stream can split a pair), the same JSON with U+FFFD in its place, so that storing
    and streaming never fail on it."""
    try:
        return model.model_dump_json()
    except PydanticSerializationError:
        data = storable_value(model.model_dump(mode="json"))
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
