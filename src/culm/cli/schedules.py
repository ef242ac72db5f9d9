"""``culm schedules …``: the schedules of a culm server.

    culm schedules add digest "Summarize the inbox" --cron "0 9 * * 1-5" --tz Europe/Paris
    culm schedules list
    culm schedules runs SCHEDULE_ID

Times of fires are shown in the schedule's own zone, and each trigger in plain words
("at 09:00 on Monday through Friday").
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

import typer

from culm.cli.client import DEFAULT_SERVER, Json, ServerOption
from culm.cli.sessions import JsonOption, LimitOption, call, print_json_lines, print_table
from culm.errors import UserError

NEXT_SHOWN = 3  # fire times `add` and `resume` show

app = typer.Typer(
    help="Agent runs on a cron, interval or one-shot schedule (on a culm server).",
    no_args_is_help=True,
)

IdArgument = Annotated[str, typer.Argument(help="The schedule's id.", show_default=False)]


# list


@app.command("list")
def list_command(
    limit: LimitOption = 100, json_lines: JsonOption = False, server: ServerOption = DEFAULT_SERVER
) -> None:
    """List the schedules, newest first, with their next fire in their own zone."""
    schedules = call(server, lambda client: client.list_schedules(limit=limit))
    if json_lines:
        print_json_lines(schedules)
    elif not schedules:
        typer.echo("no schedules", err=True)
    else:
        headers = ("SCHEDULE", "NAME", "STATE", "NEXT FIRE", "WHEN")
        print_table(headers, map(_schedule_row, schedules))


def _schedule_row(schedule: Json) -> list[str]:
    return [
        schedule["schedule_id"],
        schedule["name"],
        _state(schedule),
        in_zone(schedule.get("next_fire_at"), schedule["timezone"]),
        when(schedule),
    ]


def _state(schedule: Json) -> str:
    state = "on" if schedule["enabled"] else "paused"
    failures = int(schedule.get("consecutive_failures") or 0)
    return f"{state}, {failures} failed" if failures else state


# add


@app.command("add")
def add_command(
    name: Annotated[str, typer.Argument(help="A name for the schedule.", show_default=False)],
    message: Annotated[
        str, typer.Argument(help="The message each run starts with.", show_default=False)
    ],
    cron: Annotated[
        str | None, typer.Option("--cron", help='Five cron fields, e.g. "0 9 * * 1-5".')
    ] = None,
    every: Annotated[
        str | None, typer.Option("--every", help="An interval: 90, 90s, 15m, 2h or 1d.")
    ] = None,
    at: Annotated[
        str | None,
        typer.Option("--at", help="Once, at an ISO-8601 time (no offset: in --tz)."),
    ] = None,
    tz: Annotated[str, typer.Option("--tz", help="The IANA time zone of the times.")] = "UTC",
    model: Annotated[str | None, typer.Option("--model", "-m", help="provider:model")] = None,
    system: Annotated[str | None, typer.Option("--system", help="A system prompt.")] = None,
    tools: Annotated[str, typer.Option("--tools", help="Comma-separated tool names.")] = "",
    workspace: Annotated[
        str | None, typer.Option("--workspace", help="A directory (default: a new one per run).")
    ] = None,
    misfire: Annotated[
        str, typer.Option("--misfire", help="Missed fires: skip, run_once or catch_up.")
    ] = "run_once",
    overlap: Annotated[
        str, typer.Option("--overlap", help="While a run is active: allow, skip or queue_one.")
    ] = "skip",
    catch_up_limit: Annotated[
        int, typer.Option("--catch-up-limit", help="At most this many runs for catch_up.")
    ] = 10,
    paused: Annotated[bool, typer.Option("--paused", help="Create it paused.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="The schedule as JSON.")] = False,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """Create a schedule: exactly one of --cron, --every or --at."""
    body = {
        "name": name,
        "enabled": not paused,
        "timezone": tz,
        "trigger": trigger_of(cron, every, at),
        "run_config": {
            "message": message,
            "model": model,
            "system_prompt": system,
            "tools": [tool.strip() for tool in tools.split(",") if tool.strip()],
            "workspace": workspace,
        },
        "misfire_policy": misfire,
        "overlap_policy": overlap,
        "catch_up_limit": catch_up_limit,
    }
    schedule = call(server, lambda client: client.create_schedule(body))
    if json_out:
        print_json_lines([schedule])
        return
    typer.echo(f"created schedule {schedule['schedule_id']} ({schedule['name']})")
    _print_timing(schedule)


def trigger_of(cron: str | None, every: str | None, at: str | None) -> Json:
    """The trigger that exactly one of the three options gives."""
    given = [option for option in (cron, every, at) if option is not None]
    if len(given) != 1:
        raise UserError("give exactly one of --cron, --every or --at")
    if cron is not None:
        return {"type": "cron", "expr": cron}
    if every is not None:
        return {"type": "interval", "every_seconds": seconds(every)}
    return {"type": "once", "at": at}


_DURATION = re.compile(r"(\d+)\s*([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(text: str) -> int:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d`` as seconds."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or int(match[1]) == 0:
        raise UserError(f"--every: expected a duration like 90, 90s, 15m, 2h or 1d, got {text!r}")
    return int(match[1]) * _UNITS[match[2]]


# rm, pause, resume, trigger


@app.command("rm")
def rm_command(schedule_id: IdArgument, server: ServerOption = DEFAULT_SERVER) -> None:
    """Delete a schedule (its runs stay)."""
    call(server, lambda client: client.delete_schedule(schedule_id))
    typer.echo(f"deleted schedule {schedule_id}")


@app.command("pause")
def pause_command(schedule_id: IdArgument, server: ServerOption = DEFAULT_SERVER) -> None:
    """Stop firing until resumed."""
    call(server, lambda client: client.update_schedule(schedule_id, {"enabled": False}))
    typer.echo(f"paused schedule {schedule_id}")


@app.command("resume")
def resume_command(schedule_id: IdArgument, server: ServerOption = DEFAULT_SERVER) -> None:
    """Fire again, from the next time after now (missed times are not run)."""
    schedule = call(server, lambda client: client.update_schedule(schedule_id, {"enabled": True}))
    typer.echo(f"resumed schedule {schedule_id}")
    _print_timing(schedule)


@app.command("trigger")
def trigger_command(
    schedule_id: IdArgument, json_out: JsonOption = False, server: ServerOption = DEFAULT_SERVER
) -> None:
    """Fire now (also while paused); the overlap policy still applies."""
    fire = call(server, lambda client: client.trigger_schedule(schedule_id))
    if json_out:
        print_json_lines([fire])
    elif fire.get("run_id"):
        typer.echo(f"fired schedule {schedule_id}: {fire['status']}, run {fire['run_id']}")
    else:
        typer.echo(f"fired schedule {schedule_id}: {fire['status']} (its overlap policy)")


# runs


@app.command("runs")
def runs_command(
    schedule_id: IdArgument,
    limit: LimitOption = 20,
    json_lines: JsonOption = False,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """The schedule's fires, latest first: when (in its zone), outcome, run and lag."""

    async def fetch(client: Any) -> tuple[Json, list[Json]]:
        schedule = await client.get_schedule(schedule_id)
        return schedule, await client.schedule_runs(schedule_id, limit=limit)

    schedule, fires = call(server, fetch)
    if json_lines:
        print_json_lines(fires)
    elif not fires:
        typer.echo("no fires yet", err=True)
    else:
        zone = schedule["timezone"]
        headers = ("SCHEDULED FOR", "STATUS", "RUN", "LAG", "COMPLETED")
        print_table(headers, (_fire_row(fire, zone) for fire in fires))


def _fire_row(fire: Json, zone: str) -> list[str]:
    status = fire["status"] + (" (now)" if fire.get("manual") else "")
    lag = fire.get("dispatch_lag_ms")
    return [
        in_zone(fire["scheduled_for"], zone, seconds=True),
        status,
        fire.get("run_id") or "-",
        "-" if lag is None else f"{lag / 1000:.1f}s",
        in_zone(fire.get("completed_at"), zone, seconds=True),
    ]


# Shared


def in_zone(value: str | None, zone: str, *, seconds: bool = False) -> str:
    """An ISO-8601 time as wall-clock time in ``zone``, with the zone's abbreviation."""
    if not value:
        return "-"
    from culm.scheduler.zones import load_zone

    moment = datetime.fromisoformat(value).astimezone(load_zone(zone))
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z" if seconds else "%Y-%m-%d %H:%M %Z")


def when(schedule: Json) -> str:
    """The trigger in plain words, with its zone when that matters."""
    from culm.scheduler.describe import describe
    from culm.scheduler.models import Schedule

    parsed = Schedule.model_validate(schedule)
    words = describe(parsed.trigger, parsed.timezone)
    if parsed.trigger.type == "cron":
        words += f" ({parsed.timezone})"
    return words


def next_fires(schedule: Json, count: int = NEXT_SHOWN) -> list[str]:
    """The schedule's next ``count`` fire times, in its zone (the first is the server's)."""
    from culm.scheduler.models import Schedule
    from culm.scheduler.triggers import next_after
    from culm.scheduler.zones import load_zone

    parsed = Schedule.model_validate(schedule)
    fire = parsed.next_fire_at
    zone = load_zone(parsed.timezone)
    times: list[str] = []
    while fire is not None and len(times) < count:
        times.append(in_zone(fire.isoformat(), parsed.timezone))
        fire = next_after(parsed.trigger, zone, parsed.anchor_at, fire)
    return times


def _print_timing(schedule: Json) -> None:
    typer.echo(f"  when: {when(schedule)}")
    upcoming = next_fires(schedule) if schedule["enabled"] else []
    typer.echo(f"  next: {', '.join(upcoming) or '-'}")
