"""``culm runs``, ``culm show``, ``culm tail`` and ``culm cancel``: runs on a culm server.

``culm tail`` exits like ``culm run``: 0 when the run completes, 1 when it ends in error or is
cancelled, 2 for a mistake (unknown run, server unreachable), 130 after Ctrl-C, which only stops
following: the run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from culm.cli.client import (
    DEFAULT_SERVER,
    TERMINAL_STATUSES,
    Json,
    ServerOption,
    WaitTimeout,
    as_json,
    connect,
)
from culm.cli.render import HumanOutput, JsonOutput, Output, Tally, shorten, stderr_console
from culm.cli.sessions import (
    EXIT_INTERRUPTED,
    JsonOption,
    LimitOption,
    call,
    local_time,
    print_json_lines,
    print_table,
)
from culm.domain.events import ExecutionStarted, Gap
from culm.domain.models import RunStatus

if TYPE_CHECKING:
    from culm.cli.client import Client, StreamEvent
    from culm.domain.events import RunEvent

EXIT_OK = 0
EXIT_FAILED = 1
DETAILS_WIDTH = 100
ENVELOPE = frozenset({"seq", "run_id", "session_id", "ts", "type"})
USAGE_KINDS = (
    ("prompt_tokens", "prompt"),
    ("completion_tokens", "completion"),
    ("total_tokens", "total"),
    ("cache_read_tokens", "cache read"),
    ("cache_write_tokens", "cache write"),
    ("reasoning_tokens", "reasoning"),
)

RunIdArgument = Annotated[str, typer.Argument(help="The run's id.", show_default=False)]


# culm runs


def runs_command(
    status: Annotated[
        RunStatus | None, typer.Option("--status", help="Only runs with this status.")
    ] = None,
    session: Annotated[
        str | None, typer.Option("--session", help="Only the runs of this session.")
    ] = None,
    limit: LimitOption = 20,
    json_lines: JsonOption = False,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """List runs, newest first."""
    status_value = status.value if status else None
    runs = call(
        server,
        lambda client: client.list_runs(status=status_value, session_id=session, limit=limit),
    )
    if json_lines:
        print_json_lines(runs)
    elif not runs:
        typer.echo("no runs", err=True)
    else:
        headers = ("RUN", "STATUS", "MODEL", "ROUNDS", "TOKENS", "CREATED")
        print_table(headers, map(_run_row, runs))


def _run_row(run: Json) -> list[str]:
    return [
        run["run_id"],
        run["status"],
        run["model"],
        str(run.get("round_count", 0)),
        f"{_total_tokens(run.get('usage') or {}):,}",
        local_time(run.get("created_at")),
    ]


def _total_tokens(usage: Json) -> int:
    total: int = usage.get("total_tokens") or (
        usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
    )
    return total


# culm show


def show_command(
    run_id: RunIdArgument,
    events: Annotated[bool, typer.Option("--events", help="Also list the run's events.")] = False,
    json_out: Annotated[
        bool,
        typer.Option("--json", help='The run as JSON (with --events: {"run": …, "events": […]}).'),
    ] = False,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """Show a run: status, times, rounds, last tool, usage, error."""
    run, found = call(server, lambda client: _fetch(client, run_id, with_events=events))
    if json_out:
        shown = {"run": run, "events": [event.data for event in found]} if events else run
        print_json_lines([shown])
        return
    _print_fields(_run_fields(run))
    if events:
        typer.echo()
        for event in found:
            typer.echo(_event_line(event.data))


async def _fetch(
    client: Client, run_id: str, *, with_events: bool
) -> tuple[Json, list[StreamEvent]]:
    """The run and, if asked, its events up to the run's ``last_seq`` at that moment."""
    run = as_json(await client.get_run(run_id))
    found: list[StreamEvent] = []
    last_seq = int(run.get("last_seq", 0))
    if not with_events or last_seq == 0:
        return run, found
    async with contextlib.aclosing(client.run_events(run_id)) as events:
        async for event in events:
            found.append(event)
            if event.seq >= last_seq:
                break
    return run, found


def _run_fields(run: Json) -> list[tuple[str, str]]:
    status = run["status"] + (" (queued behind another run)" if run.get("queued") else "")
    fields = [("run", run["run_id"]), ("session", run["session_id"])]
    if run.get("parent_run_id"):
        fields.append(("parent run", run["parent_run_id"]))
    fields += [("status", status)]
    if run.get("error"):
        fields.append(("error", " ".join(str(run["error"]).split())))
    fields += [
        ("model", run["model"]),
        ("trigger", f"{run.get('trigger', '-')} (attempt {run.get('attempt', 1)})"),
        ("created", local_time(run.get("created_at"))),
        ("started", local_time(run.get("started_at"))),
        ("completed", _completed(run)),
        ("rounds", str(run.get("round_count", 0))),
        ("last tool", _last_tool(run)),
        ("last event", _last_event(run)),
        ("usage", _usage(run.get("usage") or {})),
    ]
    return fields


def _print_fields(fields: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in fields) + 2
    for label, value in fields:
        typer.echo(f"{label.ljust(width)}{value}")


def _completed(run: Json) -> str:
    completed = run.get("completed_at")
    seconds = _seconds_between(run.get("started_at"), completed)
    took = f" (took {seconds:.1f} s)" if seconds is not None else ""
    return local_time(completed) + took if completed else "-"


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _last_tool(run: Json) -> str:
    name = run.get("last_tool_name")
    if not name:
        return "-"
    phase = run.get("last_tool_phase")
    return f"{name} ({phase})" if phase else str(name)


def _last_event(run: Json) -> str:
    seq = int(run.get("last_seq", 0))
    return f"#{seq} at {local_time(run.get('last_event_at'))}" if seq else "-"


def _usage(usage: Json) -> str:
    return " · ".join(f"{label} {usage.get(key, 0):,}" for key, label in USAGE_KINDS)


def _event_line(data: Json) -> str:
    """``   7  08:00:00.123  token                  {"content": "Hel"}``."""
    details = {key: value for key, value in data.items() if key not in ENVELOPE}
    shown = shorten(json.dumps(details, ensure_ascii=False), DETAILS_WIDTH) if details else ""
    when = local_time(data.get("ts"), precise=True).split(" ")[1]  # the time of day
    return f"{data['seq']:>5}  {when}  {data.get('type', '?'):<22} {shown}".rstrip()


# culm tail


def tail_command(
    run_id: RunIdArgument,
    after: Annotated[
        int, typer.Option("--after", min=0, help="Start after this seq (0: from the start).")
    ] = 0,
    json_lines: Annotated[
        bool, typer.Option("--json", help="Print every run event as a JSON line on stdout.")
    ] = False,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """Follow a run's events live until it ends (a finished run is replayed).

    A dropped connection is resumed where it stopped. Ctrl-C stops following; the run goes on.
    """
    console = stderr_console()
    output: Output = (
        JsonOutput(sys.stdout, console) if json_lines else HumanOutput(sys.stdout, console)
    )
    follower = Follower(output, json_lines=json_lines)
    try:
        code = asyncio.run(_tail(server, run_id, after, follower))
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    raise typer.Exit(code)


async def _tail(server: str, run_id: str, after: int, follower: Follower) -> int:
    async with connect(server) as client:
        run = as_json(await client.get_run(run_id))
        follower.started_at = _parse_time(run.get("started_at"))
        notice = follower.output.notice
        try:
            async with contextlib.aclosing(
                client.run_events(run_id, after=after, on_retry=notice)
            ) as events:
                async for event in events:
                    follower.show(event)
        except asyncio.CancelledError:
            notice(f"stopped following run {run_id} (the run itself is not cancelled)")
            raise
        if follower.tally.terminal is None:
            return await _ended_without_terminal(client, run_id, follower)
    follower.finish(run_id)
    return EXIT_OK if follower.tally.status == "completed" else EXIT_FAILED


async def _ended_without_terminal(client: Client, run_id: str, follower: Follower) -> int:
    """The stream ended with no terminal event after the cursor (``--after`` past the end)."""
    status = (as_json(await client.get_run(run_id)))["status"]
    follower.output.notice(f"run {run_id} is {status}; no more events after the cursor")
    return EXIT_OK if status == "completed" else EXIT_FAILED


class Follower:
    """Shows the events of ``culm tail`` and keeps what its closing summary needs."""

    def __init__(self, output: Output, *, json_lines: bool) -> None:
        self.output = output
        self.json_lines = json_lines
        self.tally = Tally()
        self.started_at: datetime | None = None
        self._clock = time.monotonic()

    def show(self, item: StreamEvent) -> None:
        event = _parse_event(item.data)
        if event is None:  # a type this client does not know (a newer server)
            if self.json_lines:
                print_json_lines([item.data])
            return
        self.tally.observe(event)
        if isinstance(event, ExecutionStarted):
            self.started_at = event.started_at
        self.output.event(event)
        if isinstance(event, Gap) and not self.json_lines:
            self.output.notice(f"events {event.from_seq}–{event.to_seq} are no longer stored")

    def finish(self, run_id: str) -> None:
        terminal = self.tally.terminal
        if terminal is not None and self.started_at is not None:
            seconds = (terminal.ts - self.started_at).total_seconds()
        else:
            seconds = time.monotonic() - self._clock
        self.output.finish(self.tally, run_id, max(seconds, 0.0))


def _parse_event(data: Json) -> RunEvent | None:
    from pydantic import ValidationError

    from culm.domain.events import event_from_dict

    try:
        return event_from_dict(data)
    except ValidationError:
        return None


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


# culm cancel


def cancel_command(
    run_id: RunIdArgument,
    wait: Annotated[
        bool, typer.Option("--wait", help="Return once the run (and its sub-agents) ended.")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0, max=3600, help="Seconds --wait waits at most.")
    ] = 30.0,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """Cancel a run and its sub-agents (idempotent) and print its status."""
    try:
        run = call(server, lambda client: client.cancel_run(run_id, wait=wait, timeout=timeout))
    except WaitTimeout as exc:
        typer.echo(exc.run.get("status", "unknown"))
        _note(str(exc))
        raise typer.Exit(EXIT_FAILED) from None
    typer.echo(run["status"])
    if run["status"] not in TERMINAL_STATUSES:
        _note("cancel requested: the run stops shortly (--wait waits for it)")


def _note(text: str) -> None:
    stderr_console().print(Text(text, style="yellow"))
