"""The default registry of built-in tools: names, the ``read`` group, patterns and unknown names."""

from __future__ import annotations

import re

import pytest

from culm.errors import UnknownToolError
from culm.settings import Settings
from culm.tools import READ_GROUP, BashTool, ToolRegistry, builtin_tools, default_registry

READ_ONLY = ("read_file", "list_dir", "glob", "grep")
ALL = ("read_file", "write_file", "edit_file", "list_dir", "glob", "grep", "bash")


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
