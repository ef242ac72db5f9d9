"""``culm mcp list`` and ``culm mcp refresh``: the MCP tool servers of a culm server."""

from __future__ import annotations

from typing import Annotated

import typer

from culm.cli.client import DEFAULT_SERVER, Json, ServerOption
from culm.cli.render import shorten
from culm.cli.sessions import JsonOption, call, print_json_lines, print_table

ERROR_WIDTH = 80

app = typer.Typer(
    name="mcp",
    help="MCP tool servers: their status and tools.",
    no_args_is_help=True,
)


@app.command("list")
def list_command(
    tools: Annotated[
        bool, typer.Option("--tools", help="Also list each server's tools, one per line.")
    ] = False,
    json_lines: JsonOption = False,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """List the MCP servers: transport, status, tools, last error.

    Servers of config.toml show before their first use (`stopped`); a session's own once used.
    """
    servers = call(server, lambda client: client.list_mcp_servers())
    if json_lines:
        print_json_lines(servers)
    elif not servers:
        typer.echo(
            "no MCP servers (configure them as [mcp_servers.<name>] in config.toml)", err=True
        )
    else:
        print_table(("SERVER", "TRANSPORT", "STATUS", "TOOLS", "LAST ERROR"), map(_row, servers))
        if tools:
            _print_tools(servers)


@app.command("refresh")
def refresh_command(
    name: Annotated[str, typer.Argument(help="The server's name.", show_default=False)],
    session: Annotated[
        str | None, typer.Option("--session", help="The server is this session's own.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="The server's status as JSON.")] = False,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """List a ready server's tools again, or (re)connect it; print its status.

    Exits 1 when the server is not ready afterwards (the last error says why).
    """
    info = call(server, lambda client: client.refresh_mcp_server(name, session_id=session))
    if json_out:
        print_json_lines([info])
    else:
        print_table(("SERVER", "TRANSPORT", "STATUS", "TOOLS", "LAST ERROR"), [_row(info)])
    if info.get("status") != "ready":
        raise typer.Exit(1)


def _row(info: Json) -> list[str]:
    name = str(info["name"])
    if info.get("session_id"):
        name += f" (session {info['session_id']})"
    return [
        name,
        str(info.get("transport", "-")),
        str(info.get("status", "-")),
        str(info.get("tool_count", 0)),
        shorten(str(info["last_error"]), ERROR_WIDTH) if info.get("last_error") else "-",
    ]


def _print_tools(servers: list[Json]) -> None:
    for info in servers:
        typer.echo()
        typer.echo(f"{info['name']}:")
        for tool in info.get("tools") or ["(not listed yet: the server has not been used)"]:
            typer.echo(f"  {tool}")
