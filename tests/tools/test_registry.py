"""The default registry of built-in tools: names, the ``read`` group, patterns and unknown names."""

from __future__ import annotations

import re
from typing import Any, ClassVar

import pytest

from culm.domain.models import Session
from culm.errors import UnknownToolError
from culm.settings import Settings
from culm.tools import READ_GROUP, BashTool, ToolRegistry, builtin_tools, default_registry
from culm.tools.base import Tool, ToolContext, ToolSource

READ_ONLY = ("read_file", "list_dir", "glob", "grep")
ALL = (
    "read_file",
    "write_file",
    "edit_file",
    "list_dir",
    "glob",
    "grep",
    "bash",
    "compact_context",
)


@pytest.fixture
def registry() -> ToolRegistry:
    return default_registry(Settings(bash_output_limit=4096))


def test_names_are_the_builtins(registry: ToolRegistry) -> None:
    assert registry.names() == sorted(ALL)


def test_read_group_is_the_read_only_builtins(registry: ToolRegistry) -> None:
    assert registry.expand([READ_GROUP]) == READ_ONLY
    assert all(tool.read_only for tool in registry.resolve([READ_GROUP]))
    assert not any(tool.read_only for tool in registry.resolve(["write_file", "edit_file", "bash"]))


def test_expand_keeps_order_and_drops_duplicates(registry: ToolRegistry) -> None:
    assert registry.expand(["bash", " read ", "", "grep", "bash"]) == ("bash", *READ_ONLY)


def test_patterns(registry: ToolRegistry) -> None:
    assert registry.expand(["*_file"]) == ("edit_file", "read_file", "write_file")
    assert registry.expand(["*"]) == tuple(sorted(ALL))
    assert registry.expand(["gl?b", "[bg]*"]) == ("glob", "bash", "grep")


@pytest.mark.parametrize("name", ["rm", "mcp__*", "Read_File", "writes"])
def test_unknown_names_are_a_user_error(registry: ToolRegistry, name: str) -> None:
    with pytest.raises(UnknownToolError, match=re.escape(f"unknown tool {name!r}")) as info:
        registry.expand(["read_file", name])
    assert "available: read" in str(info.value)
    assert "bash" in str(info.value)


def test_resolve_returns_the_tool_objects(registry: ToolRegistry) -> None:
    tools = registry.resolve(["bash", "read_file"])
    assert [tool.name for tool in tools] == ["bash", "read_file"]
    assert isinstance(tools[0], BashTool)
    assert tools[0].output_limit == 4096
    assert registry.resolve([]) == []


def test_builtin_tools_are_fresh_and_well_described() -> None:
    first, second = builtin_tools(Settings()), builtin_tools(Settings())
    assert [tool.name for tool in first] == list(ALL)
    assert all(a is not b for a, b in zip(first, second, strict=True))
    for tool in first:
        schema = tool.parameters
        assert schema["type"] == "object"
        assert schema["additionalProperties"] is False
        assert set(schema["required"]) <= set(schema["properties"])
        assert all(prop.get("description") for prop in schema["properties"].values())
        spec = tool.spec()
        assert (spec.name, spec.description) == (tool.name, tool.description)
        assert 40 < len(tool.description) < 600


class _Echo(Tool):
    description = "Echo."
    parameters: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        return "echo"


class _Source(ToolSource):
    """Tools named ``ext__<anything>``, found only when a run resolves them."""

    prefix: ClassVar[str] = "ext__"

    def __init__(self) -> None:
        self.checked: list[tuple[str, str | None]] = []

    def check(self, name: str, session: Session | None) -> None:
        if name == "ext__bad":
            raise UnknownToolError("no such ext tool")
        self.checked.append((name, session.session_id if session else None))

    async def resolve(self, name: str, session: Session) -> list[Tool]:
        names = ["ext__a", "ext__b"] if name == "ext__*" else [name]
        return [type(n, (_Echo,), {"name": n})() for n in names]


async def test_a_source_s_names_are_checked_kept_and_resolved_per_run() -> None:
    source = _Source()
    registry = ToolRegistry(builtin_tools(Settings()), sources=[source])
    session = Session(session_id="s1", model="scripted:demo", workspace=".")
    assert registry.expand(["ext__*", "grep", "ext__a"], session) == ("ext__*", "grep", "ext__a")
    assert source.checked == [("ext__*", "s1"), ("ext__a", "s1")]
    with pytest.raises(UnknownToolError, match="no such ext tool"):
        registry.expand(["ext__bad"])
    assert [tool.name for tool in registry.resolve(["grep", "ext__*"])] == ["grep"]
    session = session.model_copy(update={"tools": ("ext__*", "grep", "ext__a")})
    resolved = await registry.resolve_for(session)
    assert [tool.name for tool in resolved] == ["ext__a", "ext__b", "grep"]
