"""``culm compact SESSION_ID``: compact a session's context now, on the server."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from culm.cli.client import DEFAULT_SERVER, ServerOption
from culm.cli.sessions import JsonOption, call, print_json_lines


def compact_command(
    session_id: Annotated[str, typer.Argument(help="The session to compact.")],
    json_lines: JsonOption = False,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """Compact a session's context: elide old tool outputs and summarize the conversation
    before its last rounds. The stored messages stay as they are. Refused while a run is
    active (a run compacts its own context)."""
    compaction = call(server, lambda client: client.compact_session(session_id))
    if json_lines:
        print_json_lines([compaction])
    else:
        typer.echo(describe(compaction))


def describe(compaction: dict[str, Any]) -> str:
    usage = compaction.get("summary_usage") or {}
    return (
        f"compacted {compaction['messages_compacted']} messages ({compaction['strategy']}): "
        f"~{compaction['tokens_before']} → ~{compaction['tokens_after']} tokens; "
        f"summarizer used {usage.get('total_tokens', 0)} tokens"
    )
