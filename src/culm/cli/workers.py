"""``culm workers``: the processes that execute runs on the server's database, and its queue.

The table is on stdout (one row per worker, oldest first); the queue's line on stderr. A worker
is ``alive`` while its heartbeats come within the lease, ``lost`` when they stopped coming
(killed, paused, cut off: its runs are taken over once their leases run out), ``stopped`` once
it stopped cleanly (listed with ``--all``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from culm.cli.client import DEFAULT_SERVER, Json, ServerOption
from culm.cli.sessions import call, local_time, print_json_lines, print_table

HEADERS = ("WORKER", "KIND", "STATE", "RUNS", "CLAIMS", "TAKEOVERS", "FENCED", "HEARTBEAT")


def workers_command(
    all_workers: Annotated[
        bool, typer.Option("--all", help="Also the workers that stopped cleanly.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help='One JSON object: {"workers": […], "queue": {…}}.')
    ] = False,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """List the workers executing runs (alive, lost, stopped) and the run queue."""
    body = call(server, lambda client: client.list_workers(include_stopped=all_workers))
    if json_out:
        print_json_lines([body])
        return
    workers: list[Json] = body["workers"]
    if workers:
        print_table(HEADERS, map(_worker_row, workers))
    else:
        typer.echo("no workers (start `culm worker`, or a plain `culm serve`)", err=True)
    typer.echo(queue_line(body["queue"]), err=True)


def _worker_row(worker: Json) -> list[str]:
    return [
        worker["worker_id"],
        worker["kind"],
        state(worker),
        f"{worker['active_runs']}/{worker['concurrency']}",
        f"{worker['claims']:,}",
        f"{worker['takeovers']:,}",
        f"{worker['fenced_writes']:,}",
        local_time(worker.get("last_heartbeat_at")),
    ]


def state(worker: Json) -> str:
    if worker.get("stopped_at"):
        return "stopped"
    return "alive" if worker["alive"] else "lost"


def queue_line(queue: Json) -> str:
    """``queue: 3 pending (2 ready), 5 running, oldest pending 1.2 s``."""
    age = queue.get("oldest_pending_age")
    oldest = f", oldest pending {age:.1f} s" if age is not None else ""
    return (
        f"queue: {queue['pending']:,} pending ({queue['ready']:,} ready), "
        f"{queue['running']:,} running{oldest}"
    )
