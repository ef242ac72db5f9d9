"""``@culm.tool``: a typed Python function, sync or async, as a tool.

    @culm.tool(read_only=True)
    async def weather(city: str, unit: Literal["C", "F"] = "C") -> str:
        '''The weather in a city now.

        Args:
            city: the city's name, in English.
            unit: Celsius or Fahrenheit.
        '''

The name is the function's (or ``name=``), the description the docstring's text before its
argument section, each parameter's description its entry in that section (Google ``Args:``,
NumPy ``Parameters``, or reST ``:param x:``), and the JSON schema is pydantic's for the type
hints (Optional, Literal, Enum, defaults, nested models, lists …). The model's arguments are
validated before the call; an invalid one goes back to the model as the tool's error result,
naming the field. A parameter typed :class:`~culm.tools.base.ToolContext` is not shown to the
model: the call's context is passed in it.

A return value that is a ``str`` is the result as it is; anything else is sent as JSON
(pydantic models, dataclasses, dates included). A sync function runs in a worker thread; a
cancel (or the tool's timeout) stops waiting for it at once, but Python cannot stop a thread:
the function runs on to its end in the background and its result is dropped. A sync tool that
may run long should check a deadline of its own (``ctx.timeout``).
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Callable
from typing import Any, ClassVar, get_type_hints, overload

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from culm.errors import AppLoadError, ToolFailure
from culm.tools.base import Tool, ToolContext

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ToolDefinitionError(AppLoadError):
    """A function that cannot be a tool; the message names the tool and the problem."""


class FunctionTool(Tool):
    """A tool made from a typed function (see the module's docstring). Calling the tool calls
    the function, so it can still be used (and tested) as plain Python."""

    function: ClassVar[Callable[..., Any]]
    arguments_model: ClassVar[type[BaseModel]]
    # The parameter that receives the ToolContext (None: the function takes none).
    context_parameter: ClassVar[str | None]
    # The model's field name of each of the function's parameters (those are aliases).
    fields: ClassVar[dict[str, str]]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        try:
            validated = self.arguments_model.model_validate(arguments)
        except ValidationError as exc:
            raise ToolFailure(_validation_message(self.name, exc)) from None
        kwargs = {param: getattr(validated, field) for param, field in self.fields.items()}
        if self.context_parameter is not None:
            kwargs[self.context_parameter] = ctx
        if inspect.iscoroutinefunction(self.function):
            result = await self.function(**kwargs)
        else:
            result = await asyncio.to_thread(self.function, **kwargs)
        return result_text(result)


def result_text(value: Any) -> str:
    """A tool's return value as the model is sent it: a str as it is, anything else as JSON."""
    if isinstance(value, str):
        return value
    try:
        return pydantic_core.to_json(value).decode()
    except pydantic_core.PydanticSerializationError as exc:
        raise ToolFailure(f"the tool's result cannot be sent as JSON: {exc}") from None


@overload
def tool(function: Callable[..., Any], /) -> FunctionTool: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    read_only: bool = False,
    timeout: float | None = None,
    require_approval: bool = False,
) -> Callable[[Callable[..., Any]], FunctionTool]: ...
def tool(
    function: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    read_only: bool = False,
    timeout: float | None = None,
    require_approval: bool = False,
) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Make a typed function a tool: ``@tool`` or ``@tool(name=…, read_only=…, timeout=…,
    require_approval=…)``. A function that cannot be one raises :class:`ToolDefinitionError`."""

    def make(fn: Callable[..., Any]) -> FunctionTool:
        return function_tool(
            fn,
            name=name,
            description=description,
            read_only=read_only,
            timeout=timeout,
            require_approval=require_approval,
        )

    return make if function is None else make(function)


def function_tool(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    read_only: bool = False,
    timeout: float | None = None,
    require_approval: bool = False,
) -> FunctionTool:
    """The :class:`FunctionTool` for ``fn`` (what :func:`tool` does)."""
    if isinstance(fn, Tool):
        raise ToolDefinitionError(f"tool {fn.name!r}: it is already a tool")
    tool_name: str = name or str(getattr(fn, "__name__", ""))
    if not TOOL_NAME.match(tool_name):
        raise ToolDefinitionError(
            f"tool {tool_name!r}: a tool's name is 1-64 letters, digits, '_' or '-'"
        )
    if timeout is not None and timeout <= 0:
        raise ToolDefinitionError(f"tool {tool_name!r}: timeout must be positive, got {timeout}")
    doc = parse_docstring(inspect.getdoc(fn) or "")
    model, fields, ctx_param = _arguments_model(fn, tool_name, doc.params)
    try:
        schema = tool_schema(model)
    except Exception as exc:  # pydantic's PydanticSchemaGenerationError and kin
        raise ToolDefinitionError(f"tool {tool_name!r}: {_first_line(exc)}") from exc
    attributes = {
        "name": tool_name,
        "description": description or doc.summary or tool_name,
        "parameters": schema,
        "read_only": read_only,
        "timeout": timeout,
        "require_approval": require_approval,
        "function": staticmethod(fn),
        "arguments_model": model,
        "context_parameter": ctx_param,
        "fields": fields,
        "__doc__": inspect.getdoc(fn),
    }
    cls = type(f"{tool_name}_tool", (FunctionTool,), attributes)
    return cls()  # type: ignore[no-any-return]


def _arguments_model(
    fn: Callable[..., Any], tool_name: str, descriptions: dict[str, str]
) -> tuple[type[BaseModel], dict[str, str], str | None]:
    """The pydantic model of ``fn``'s parameters (field ``a0``, ``a1`` … aliased to each
    parameter's name, so no name can clash with pydantic's own), the parameter → field map, and
    the ToolContext parameter."""
    if not callable(fn):
        raise ToolDefinitionError(f"tool {tool_name!r}: {fn!r} is not a function")
    try:
        signature = inspect.signature(fn)
        hints = get_type_hints(fn, include_extras=True)
    except (NameError, TypeError, ValueError) as exc:
        raise ToolDefinitionError(
            f"tool {tool_name!r}: cannot read its type hints ({exc})"
        ) from exc
    definitions: dict[str, Any] = {}
    fields: dict[str, str] = {}
    ctx_param: str | None = None
    for index, param in enumerate(signature.parameters.values()):
        where = f"tool {tool_name!r}, parameter {param.name!r}"
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise ToolDefinitionError(f"{where}: a tool takes named parameters only")
        if param.name not in hints:
            raise ToolDefinitionError(f"{where}: has no type hint (the schema is built from it)")
        hint = hints[param.name]
        if hint is ToolContext:
            ctx_param = param.name
            continue
        default = ... if param.default is param.empty else param.default
        info = Field(default, alias=param.name, description=descriptions.get(param.name))
        field = f"a{index}"
        definitions[field] = (hint, info)
        fields[param.name] = field
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=False)
    try:
        model = create_model(f"{tool_name}_arguments", __config__=config, **definitions)
    except Exception as exc:
        raise ToolDefinitionError(f"tool {tool_name!r}: {_first_line(exc)}") from exc
    return model, fields, ctx_param


def tool_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema as a tool's ``parameters``: pydantic's, without its titles."""
    schema = _without_titles(model.model_json_schema())
    schema.setdefault("properties", {})
    return schema  # type: ignore[no-any-return]


def _without_titles(node: Any) -> Any:
    if isinstance(node, list):
        return [_without_titles(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", "$defs") and isinstance(value, dict):
            out[key] = {name: _without_titles(sub) for name, sub in value.items()}
        else:
            out[key] = _without_titles(value)
    return out


def _validation_message(tool_name: str, exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or "(arguments)"
        problems.append(f"{field}: {error['msg']}")
    return f"invalid arguments for {tool_name}: " + "; ".join(problems)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# Docstrings


class Docstring:
    """A docstring's summary (the text before its sections) and its parameters' descriptions."""

    def __init__(self, summary: str, params: dict[str, str]) -> None:
        self.summary = summary
        self.params = params


_GOOGLE_ARGS = re.compile(r"^(Args|Arguments|Parameters|Params)\s*:\s*$")
_GOOGLE_SECTION = re.compile(r"^[A-Z][A-Za-z ]*:\s*$")
_GOOGLE_ENTRY = re.compile(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")
_NUMPY_UNDERLINE = re.compile(r"^-{3,}\s*$")
_NUMPY_ENTRY = re.compile(r"^(\w+)\s*(:.*)?$")
_REST_PARAM = re.compile(r"^:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")
_REST_FIELD = re.compile(r"^:\w+")


def parse_docstring(doc: str) -> Docstring:
    """Google, NumPy and reST styles; whatever is not an argument section stays out of it."""
    lines = doc.expandtabs().splitlines()
    params: dict[str, str] = {}
    summary_end = len(lines)
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        numpy = i + 1 < len(lines) and _NUMPY_UNDERLINE.match(lines[i + 1].strip())
        if _GOOGLE_ARGS.match(stripped) and not numpy:
            summary_end = min(summary_end, i)
            i = _google_section(lines, i + 1, params)
        elif numpy:
            summary_end = min(summary_end, i)
            if stripped in ("Parameters", "Arguments", "Args", "Other Parameters"):
                i = _numpy_section(lines, i + 2, params)
            else:
                i += 2
        elif _REST_FIELD.match(stripped):
            summary_end = min(summary_end, i)
            i = _rest_field(lines, i, params)
        elif _GOOGLE_SECTION.match(stripped) and i > 0 and not lines[i - 1].strip():
            summary_end = min(summary_end, i)
            i += 1
        else:
            i += 1
    summary = "\n".join(lines[:summary_end]).strip()
    return Docstring(summary, params)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _google_section(lines: list[str], i: int, params: dict[str, str]) -> int:
    base: int | None = None
    current: str | None = None
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        indent = _indent(line)
        if base is None:
            base = indent
        if indent < base or (indent == 0 and base == 0 and _GOOGLE_SECTION.match(line.strip())):
            break
        entry = _GOOGLE_ENTRY.match(line.strip()) if indent == base else None
        if entry:
            current = entry.group(1).lstrip("*")
            params[current] = entry.group(3).strip()
        elif current is not None:
            params[current] = f"{params[current]} {line.strip()}".strip()
        i += 1
    return i


def _numpy_section(lines: list[str], i: int, params: dict[str, str]) -> int:
    current: str | None = None
    base: int | None = None
    while i < len(lines):
        line = lines[i]
        if i + 1 < len(lines) and _NUMPY_UNDERLINE.match(lines[i + 1].strip()):
            break  # the next section
        if not line.strip():
            i += 1
            continue
        indent = _indent(line)
        if base is None:
            base = indent
        entry = _NUMPY_ENTRY.match(line.strip()) if indent == base else None
        if entry:
            current = entry.group(1)
            params[current] = ""
        elif current is not None:
            params[current] = f"{params[current]} {line.strip()}".strip()
        i += 1
    return i


def _rest_field(lines: list[str], i: int, params: dict[str, str]) -> int:
    match = _REST_PARAM.match(lines[i].strip())
    i += 1
    while i < len(lines) and lines[i].strip() and not _REST_FIELD.match(lines[i].strip()):
        if match:
            text = f"{match.group(2)} {lines[i].strip()}"
            match = _REST_PARAM.match(f":param {match.group(1)}: {text.strip()}")
        i += 1
    if match:
        params[match.group(1)] = match.group(2).strip()
    return i
