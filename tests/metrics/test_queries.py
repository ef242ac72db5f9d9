"""The metrics queries on SQLite and PostgreSQL, over events written at known times."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from culm.metrics import events as m
from culm.metrics.queries import MetricsQueries
from culm.metrics.reports import Granularity
from culm.metrics.store import MetricsStore
from tests.metrics.events import T0, at, run_events, usage

DAY = timedelta(days=1)


@pytest.fixture
async def history(metrics_store: MetricsStore) -> None:
    """Four runs over three sessions and three days; one failed, one cancelled, one running."""
    events = [
        *run_events("r1", "s1", when=T0, rounds=[usage(100, 10, cache_read_tokens=50), usage(200, 20)], tools=[("grep", True, 4), ("bash", False, 40)]),
        *run_events("r2", "s1", when=T0 + DAY, rounds=[usage(300, 30, reasoning_tokens=7)], status=m.SessionStatus.FAILED, partial_last=True),
        *run_events("r3", "s2", when=T0 + 2 * DAY, model="anthropic:claude", rounds=[usage(1000, 100, cache_write_tokens=20)], tools=[("grep", True, 6)], status=m.SessionStatus.CANCELLED),
        m.SessionStarted(meta=at(T0 + 2 * DAY, "r4"), session_id="s3", model="anthropic:claude"),
    ]  # fmt: skip
    await metrics_store.write(events)


@pytest.mark.usefixtures("history")
async def test_summary_over_everything(queries: MetricsQueries) -> None:
    summary = await queries.summary()
    assert (summary.sessions, summary.runs, summary.active_sessions) == (3, 4, 1)
    counts = summary.runs_by_status
    assert (counts.running, counts.completed, counts.failed, counts.cancelled) == (1, 1, 1, 1)
    assert (summary.rounds, summary.failed_rounds, summary.partial_rounds) == (4, 1, 1)
    assert (summary.tool_calls, summary.tool_failures) == (3, 1)
    assert summary.tokens == usage(
        1600, 160, cache_read_tokens=50, cache_write_tokens=20, reasoning_tokens=7
    )
    assert summary.error_rate == pytest.approx(1 / 3)


@pytest.mark.usefixtures("history")
async def test_summary_of_a_date_range(queries: MetricsQueries) -> None:
    day_two = (T0 + DAY).date()
    summary = await queries.summary(day_two, day_two)
    assert (summary.sessions, summary.runs, summary.rounds) == (1, 1, 1)
    assert summary.tokens == usage(300, 30, reasoning_tokens=7)
    assert summary.active_sessions == 1  # "now", whatever the range
    later = await queries.summary((T0 + DAY).date(), None)
    assert (later.runs, later.rounds, later.tool_calls) == (3, 2, 1)
    assert (await queries.summary(None, T0.date() - DAY)).runs == 0


@pytest.mark.usefixtures("history")
async def test_models(queries: MetricsQueries) -> None:
    models = {stats.model: stats for stats in (await queries.models()).models}
    assert set(models) == {"openai:gpt-4o", "anthropic:claude"}
    gpt = models["openai:gpt-4o"]
    assert (gpt.runs, gpt.rounds, gpt.failed_rounds, gpt.partial_rounds) == (2, 3, 1, 1)
    assert gpt.tokens.total_tokens == 660
    assert gpt.avg_latency_ms == 500
    assert models["anthropic:claude"].runs == 2


@pytest.mark.usefixtures("history")
async def test_sessions_newest_first_with_filters_and_limit(queries: MetricsQueries) -> None:
    sessions = (await queries.sessions()).sessions
    assert [s.session_id for s in sessions] == ["s2", "s3", "s1"]  # by last activity
    s1 = sessions[2]
    assert (s1.runs, s1.rounds, s1.tool_calls, s1.message_count, s1.last_status) == (
        2,
        3,
        2,
        6,
        "failed",
    )
    assert s1.tokens.prompt_tokens == 600 and not s1.active
    assert sessions[1].active and sessions[1].rounds == 0
    assert [s.session_id for s in (await queries.sessions(limit=1)).sessions] == ["s2"]
    claude = (await queries.sessions(model="anthropic:claude")).sessions
    assert [s.session_id for s in claude] == ["s2", "s3"]
    first_day = (await queries.sessions(T0.date(), T0.date())).sessions
    assert [s.session_id for s in first_day] == ["s1"]


@pytest.mark.usefixtures("history")
async def test_a_sessions_rounds_with_their_tool_calls(queries: MetricsQueries) -> None:
    detail = await queries.session("s1")
    assert detail is not None
    assert [run.run_id for run in detail.runs] == ["r1", "r2"]
    assert [r.round_id for r in detail.rounds] == ["r1:1:1", "r1:1:2", "r2:1:1"]
    first = detail.rounds[0]
    assert [(c.tool_name, c.success, c.latency_ms) for c in first.tool_calls] == [
        ("grep", True, 4),
        ("bash", False, 40),
    ]
    assert detail.rounds[1].tool_calls == []
    last = detail.rounds[2]
    assert (last.status, last.partial, last.error) == ("failed", True, "cut")
    assert detail.tokens.total_tokens == 660
    assert await queries.session("nobody") is None


@pytest.mark.usefixtures("history")
async def test_daily_by_day_with_breakdowns(queries: MetricsQueries) -> None:
    today = (T0 + 2 * DAY).date()
    report = await queries.daily(4, Granularity.DAY, today=today)
    assert [p.start for p in report.periods] == [today - timedelta(days=n) for n in (3, 2, 1, 0)]
    assert [p.runs for p in report.periods] == [0, 1, 1, 2]
    assert [p.rounds for p in report.periods] == [0, 2, 1, 1]
    last = report.periods[-1]
    assert [(pm.model, pm.rounds, pm.tokens.total_tokens) for pm in last.models] == [
        ("anthropic:claude", 1, 1100)
    ]
    first_day = report.periods[1]
    assert [(pt.tool_name, pt.calls, pt.failures) for pt in first_day.tools] == [
        ("bash", 1, 1),
        ("grep", 1, 0),
    ]


@pytest.mark.usefixtures("history")
async def test_weeks_start_on_monday_and_months_on_the_first(queries: MetricsQueries) -> None:
    assert T0.date().weekday() == 0
    today = (T0 + 2 * DAY).date()  # Wednesday
    weeks = await queries.daily(10, Granularity.WEEK, today=today)
    assert [(p.start, p.end) for p in weeks.periods] == [
        (date(2026, 11, 9), date(2026, 11, 15)),
        (date(2026, 11, 16), date(2026, 11, 22)),
    ]
    assert [p.rounds for p in weeks.periods] == [0, 4]
    assert weeks.periods[1].tokens.total_tokens == 1760
    months = await queries.daily(40, Granularity.MONTH, today=today)
    assert [(p.start, p.end) for p in months.periods] == [
        (date(2026, 10, 1), date(2026, 10, 31)),
        (date(2026, 11, 1), date(2026, 11, 30)),
    ]
    assert [p.runs for p in months.periods] == [0, 4]


async def test_tool_latency_percentiles_are_nearest_rank(
    metrics_store: MetricsStore, queries: MetricsQueries
) -> None:
    calls = [("read", True, latency) for latency in range(20, 0, -1)]  # 1 … 20 ms
    calls += [("bash", n % 2 == 0, 100) for n in range(3)]
    await metrics_store.write(run_events("r1", "s1", tools=calls))
    tools = {t.tool_name: t for t in (await queries.tools()).tools}
    read = tools["read"]
    assert (read.calls, read.failures, read.p50_latency_ms, read.p95_latency_ms) == (20, 0, 10, 19)
    assert read.avg_latency_ms == pytest.approx(10.5)
    bash = tools["bash"]
    assert (bash.calls, bash.failures, bash.p50_latency_ms, bash.p95_latency_ms) == (3, 1, 100, 100)
    assert [t.tool_name for t in (await queries.tools()).tools] == ["read", "bash"]
    assert (await queries.tools(T0.date() + DAY, None)).tools == []


async def test_forward_requests(metrics_store: MetricsStore, queries: MetricsQueries) -> None:
    def request(
        n: int, endpoint: str, model: str, status: m.ForwardStatus, tokens: int | None
    ) -> list[m.MetricsEvent]:
        when = T0 + timedelta(minutes=n)
        return [
            m.RequestStarted(
                meta=at(when),
                request_id=f"q{n}",
                endpoint=endpoint,
                model=model,
                is_stream=n % 2 == 0,
            ),
            m.RequestCompleted(
                meta=at(when + timedelta(seconds=1)),
                request_id=f"q{n}",
                status_code={"success": 200, "error": 500, "timeout": 504}[status.value],
                status=status,
                usage=usage(tokens, 1) if tokens is not None else None,
                latency_ms=100 * (n + 1),
                error=None if status is m.ForwardStatus.SUCCESS else status.value,
            ),
        ]

    await metrics_store.write(
        [
            *request(0, "openai.chat_completions", "gpt-4o", m.ForwardStatus.SUCCESS, 10),
            *request(1, "openai.chat_completions", "gpt-4o-mini", m.ForwardStatus.ERROR, None),
            *request(2, "anthropic.messages", "claude", m.ForwardStatus.SUCCESS, 20),
            *request(3, "anthropic.messages", "claude", m.ForwardStatus.TIMEOUT, None),
            m.RequestStarted(meta=at(T0 + timedelta(hours=1)), request_id="q4", endpoint="anthropic.messages", model="claude", is_stream=False),
        ]
    )  # fmt: skip
    summary = await queries.forward_summary()
    assert (
        summary.requests,
        summary.succeeded,
        summary.errors,
        summary.timeouts,
        summary.pending,
    ) == (5, 2, 1, 1, 1)
    assert (summary.streaming, summary.tokens.total_tokens) == (2, 32)
    assert summary.error_rate == pytest.approx(0.5)
    endpoints = {e.endpoint: e for e in (await queries.forward_endpoints()).endpoints}
    assert (endpoints["anthropic.messages"].requests, endpoints["anthropic.messages"].timeouts) == (
        3,
        1,
    )
    assert endpoints["openai.chat_completions"].avg_latency_ms == pytest.approx(150)
    recent = (await queries.forward_requests(limit=2)).requests
    assert [r.request_id for r in recent] == ["q4", "q3"]
    claude = (
        await queries.forward_requests(endpoint="anthropic.messages", model="claude")
    ).requests
    assert [r.request_id for r in claude] == ["q4", "q3", "q2"]
    assert claude[2].usage == usage(20, 1)
    assert (await queries.forward_requests(model="gpt-4o-mini")).requests[0].status == "error"
