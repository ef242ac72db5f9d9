"""``culm sessions``: the server's sessions, newest first.

Also the small helpers the other server commands share: :func:`call` (one request to the
server, Ctrl-C → exit 130), plain-text tables, times, and JSON lines.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from culm.cli.client import DEFAULT_SERVER, ServerOption, as_json, connect

if TYPE_CHECKING:
    from culm.cli.client import Client

EXIT_INTERRUPTED = 130
T = TypeVar("T")

LimitOption = Annotated[int, typer.Option("--limit", min=1, max=1000, help="At most this many.")]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]


def sessions_command(
    limit: LimitOption = 20,
    json_lines: JsonOption = False,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """List the server's sessions, newest first."""
    sessions = call(server, lambda client: client.list_sessions(limit=limit))
    if json_lines:
        print_json_lines(sessions)
    elif not sessions:
        typer.echo("no sessions", err=True)
    else:
        print_table(("SESSION", "MODEL", "TOOLS", "CREATED", "KIND"), map(_session_row, sessions))


def _session_row(session: dict[str, Any]) -> list[str]:
    return [
        session["session_id"],
        session["model"],
        ",".join(session.get("tools") or ()) or "-",
        local_time(session.get("created_at")),
        session.get("kind", "root"),
    ]


# Shared by the server commands


def call(server: str, request: Callable[[Client], Awaitable[Any]]) -> Any:
    """Run ``request`` with a client for ``server`` and return its result as JSON."""

    async def main() -> Any:
        async with connect(server) as client:
            return as_json(await request(client))

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Left-aligned columns, two spaces apart, on stdout (plain text: easy to grep or cut)."""
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[column]) for line in lines) for column in range(len(headers))]
    for line in lines:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=True)]
        typer.echo("  ".join(cells).rstrip())


def print_json_lines(items: Iterable[Any]) -> None:
    for item in items:
        sys.stdout.write(json.dumps(item, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def local_time(value: str | None, *, precise: bool = False) -> str:
    """An ISO-8601 UTC time from the server as local ``YYYY-MM-DD HH:MM:SS ZONE`` (the zone's
    abbreviation, e.g. ``CET``); "-" for none."""
    if not value:
        return "-"
    moment = datetime.fromisoformat(value).astimezone()
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    if precise:
        text += f".{moment.microsecond // 1000:03d}"
    return f"{text} {moment.strftime('%Z')}"
