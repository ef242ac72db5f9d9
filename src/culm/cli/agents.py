"""``culm agents``: the server's named agents, and where each is defined; ``--app``, the option
of the commands that load apps."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from culm.cli.client import DEFAULT_SERVER, Json, ServerOption
from culm.cli.sessions import JsonOption, call, print_json_lines, print_table

AppOption = Annotated[
    list[str] | None,
    typer.Option(
        "--app",
        help="An app to load, as module:attr (e.g. myagents.main:app); repeat for more. "
        "Instead of CULM_APP.",
        show_default=False,
    ),
]


def app_overrides(apps: list[str] | None) -> dict[str, Any]:
    """Settings for ``--app`` (none: CULM_APP's). Either way the current directory is on the
    import path, so `module:attr` finds the project's own modules, as uvicorn does."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    return {"app": apps} if apps else {}


NameArgument = Annotated[
    str | None, typer.Argument(help="Show this agent's definition.", show_default=False)
]


def agents_command(
    name: NameArgument = None,
    json_lines: JsonOption = False,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """List the named agents (code, config.toml and API ones), or show one."""
    if name is not None:
        agent = call(server, lambda client: client.get_agent(name))
        print_json_lines([agent]) if json_lines else _show(agent)
        return
    agents = call(server, lambda client: client.list_agents())
    if json_lines:
        print_json_lines(agents)
    elif not agents:
        typer.echo("no agents", err=True)
    else:
        print_table(("AGENT", "MODEL", "TOOLS", "SOURCE", "DESCRIPTION"), map(_row, agents))


def _row(agent: Json) -> list[str]:
    return [
        agent["name"],
        agent.get("model") or "(default)",
        ",".join(agent.get("tools") or ()) or "-",
        f"{agent['source']} ({agent['origin']})",
        (agent.get("description") or "").splitlines()[0] if agent.get("description") else "",
    ]


def _show(agent: Json) -> None:
    for key, value in agent.items():
        if value is not None and value != []:
            typer.echo(f"{key}: {value}")
