"""``culm metrics``: usage metrics from a running server, as a table or JSON lines.

Without ``--by``: the summary of the last ``--days`` UTC days (today included). With ``--by
model`` / ``tool`` / ``day``: one row per model, tool or day of that range (in the table, only
the days with runs, rounds or tool calls; as JSON, every day). Cost is in USD; ``—`` where it
is unknown (a model without a price, or a server older than cost).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

import typer

from culm.cli.client import DEFAULT_SERVER, Json, ServerOption
from culm.cli.sessions import JsonOption, call, print_json_lines, print_table

TOKEN_KINDS = ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_write_tokens")
TOKEN_HEADERS = ("PROMPT", "COMPLETION", "CACHE_READ", "CACHE_WRITE", "REASONING", "TOTAL")


class By(StrEnum):
    MODEL = "model"
    AGENT = "agent"
    TOOL = "tool"
    DAY = "day"


ByOption = Annotated[By | None, typer.Option("--by", help="One row per model, agent, tool or day.")]
DaysOption = Annotated[
    int, typer.Option("--days", min=1, max=3660, help="The last N UTC days, today included.")
]


def metrics_command(
    by: ByOption = None,
    days: DaysOption = 30,
    json_lines: JsonOption = False,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """Show usage metrics: runs, rounds, tool calls and tokens."""
    end = datetime.now(UTC).date()
    start = end - timedelta(days=days - 1)
    dates = {"start_date": start.isoformat(), "end_date": end.isoformat()}
    if by is None:
        body = call(server, lambda client: client.metrics("summary", **dates))
        _show([body], json_lines, lambda: _summary_table(body, start, end))
    elif by is By.MODEL:
        body = call(server, lambda client: client.metrics("models", **dates))
        _show(body["models"], json_lines, lambda: _models_table(body["models"]))
    elif by is By.AGENT:
        body = call(server, lambda client: client.metrics("agents", **dates))
        _show(body["agents"], json_lines, lambda: _models_table(body["agents"], key="agent"))
    elif by is By.TOOL:
        body = call(server, lambda client: client.metrics("tools", **dates))
        _show(body["tools"], json_lines, lambda: _tools_table(body["tools"]))
    else:
        body = call(server, lambda client: client.metrics("daily", days=days, granularity="day"))
        periods = body["periods"]
        if not json_lines:  # the table shows the days with activity, JSON every day of the range
            periods = [p for p in periods if p["runs"] or p["rounds"] or p["tool_calls"]]
        _show(periods, json_lines, lambda: _days_table(periods))


def _show(items: Sequence[Json], json_lines: bool, table: Callable[[], None]) -> None:
    if json_lines:
        print_json_lines(items)
    elif not items:
        typer.echo("no metrics in this range", err=True)
    else:
        table()


def _summary_table(body: Json, start: date, end: date) -> None:
    runs = body["runs_by_status"]
    tokens = body["tokens"]
    rows = [
        ("range (UTC)", f"{start} to {end}"),
        ("sessions", f"{body['sessions']} ({body['active_sessions']} active now)"),
        ("runs", _n(body["runs"])),
        (
            "  completed / failed / cancelled",
            f"{runs['completed']} / {runs['failed']} / {runs['cancelled']}",
        ),
        ("  running", _n(runs["running"])),
        ("  error rate", f"{body['error_rate']:.1%}"),
        (
            "rounds",
            f"{_n(body['rounds'])} ({body['failed_rounds']} failed, {body['partial_rounds']} partial)",
        ),
        (
            "tool calls",
            f"{_n(body['tool_calls'])} ({body['tool_failures']} failed, "
            f"{body.get('tool_cancelled', 0)} cancelled)",
        ),
        *((f"tokens: {kind.removesuffix('_tokens')}", _n(tokens[kind])) for kind in tokens),
        ("cost (USD)", _usd(body.get("cost_usd"))),
    ]
    if body.get("unpriced_models"):
        rows.append(("  unpriced models", ", ".join(body["unpriced_models"])))
    print_table(("METRIC", "VALUE"), rows)


def _models_table(models: list[Json], *, key: str = "model") -> None:
    headers = (key.upper(), "RUNS", "ROUNDS", "FAILED", *TOKEN_HEADERS, "COST_USD", "AVG_MS")
    print_table(
        headers,
        (
            [
                m[key],
                _n(m["runs"]),
                _n(m["rounds"]),
                _n(m["failed_rounds"]),
                *_tokens(m["tokens"]),
                _usd(m.get("cost_usd")),
                _ms(m["avg_latency_ms"]),
            ]
            for m in models
        ),
    )


def _tools_table(tools: list[Json]) -> None:
    headers = ("TOOL", "CALLS", "FAILURES", "CANCELLED", "P50_MS", "P95_MS", "AVG_MS")
    print_table(
        headers,
        (
            [
                t["tool_name"],
                _n(t["calls"]),
                _n(t["failures"]),
                _n(t.get("cancelled", 0)),
                _n(t["p50_latency_ms"]),
                _n(t["p95_latency_ms"]),
                _ms(t["avg_latency_ms"]),
            ]
            for t in tools
        ),
    )


def _days_table(periods: list[Json]) -> None:
    headers = ("DAY", "RUNS", "ROUNDS", "TOOL_CALLS", *TOKEN_HEADERS, "COST_USD")
    print_table(
        headers,
        (
            [
                p["start"],
                _n(p["runs"]),
                _n(p["rounds"]),
                _n(p["tool_calls"]),
                *_tokens(p["tokens"]),
                _usd(p.get("cost_usd")),
            ]
            for p in periods
        ),
    )


def _tokens(usage: Json) -> list[str]:
    kinds = (*TOKEN_KINDS, "reasoning_tokens", "total_tokens")
    return [_n(usage.get(kind, 0)) for kind in kinds]


def _n(value: Any) -> str:
    return f"{int(value):,}"


def _usd(value: Any) -> str:
    """Dollars to the cent, and below a cent to 4 significant digits; ``—`` if unknown."""
    if value is None:
        return "—"
    value = float(value)
    return f"{value:,.2f}" if value >= 0.01 or value == 0 else f"{value:.4g}"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):,.0f}"
