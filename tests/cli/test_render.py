"""How run events look to a person: which stream, which line, which words."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from rich.console import Console

from culm.cli.render import HumanOutput, Tally, format_arguments, shorten, summary_line
from culm.domain.events import (
    Complete,
    Error,
    ReasoningToken,
    RoundCompleted,
    RunEvent,
    RunnerProgress,
    Token,
    ToolComplete,
    ToolError,
    ToolStart,
    ToolToken,
)
from culm.domain.models import Usage


class Screen:
    def __init__(self) -> None:
        self.out = io.StringIO()
        self.err_file = io.StringIO()
        err = Console(file=self.err_file, color_system=None, highlight=False, soft_wrap=True)
        self.output = HumanOutput(self.out, err)

    def show(self, *events: RunEvent) -> None:
        for event in events:
            self.output.event(event)

    @property
    def err(self) -> str:
        return self.err_file.getvalue()


def tool_start(name: str = "bash", arguments: object = None) -> ToolStart:
    return ToolStart(tool_call_id="c1", tool_name=name, arguments=arguments or {})


def test_the_answer_goes_to_stdout_and_the_rest_to_stderr() -> None:
    screen = Screen()
    screen.show(
        ReasoningToken(content="thinking"),
        Token(content="Let me "),
        Token(content="look."),
        tool_start("list_dir", {"path": "."}),
        Token(content="Done."),
    )
    screen.output.notice("bye")

    assert screen.out.getvalue() == "Let me look.\nDone.\n"
    assert screen.err == 'thinking\n▸ list_dir {"path": "."} running…\nbye\n'


def test_tool_output_is_indented_line_by_line() -> None:
    screen = Screen()
    screen.show(
        tool_start(),
        ToolToken(tool_call_id="c1", content="one\ntw"),
        ToolToken(tool_call_id="c1", content="o\nthree"),
        ToolError(tool_call_id="c1", tool_name="bash", error="exit\n  status 2", elapsed_ms=30001),
    )

    assert screen.err.splitlines() == [
        "▸ bash {} running…",
        "    one",
        "    two",
        "    three",
        "✗ bash: exit status 2 30001 ms",
    ]


def test_long_arguments_are_shortened() -> None:
    text = format_arguments({"command": "x" * 500})

    assert len(text) == 100
    assert text.startswith('{"command": "xxx') and text.endswith("…")
    assert shorten("a\n  b", 10) == "a b"


def test_the_summary_counts_rounds_and_tokens() -> None:
    tally = Tally()
    usage = Usage(prompt_tokens=1100, completion_tokens=134, total_tokens=1234)
    for event in (
        RunnerProgress(round_count=1),
        RoundCompleted(round=1, usage=usage, latency_ms=5, model="scripted:demo"),
        RunnerProgress(round_count=2),
        Complete(usage=usage, final_message="Done."),
    ):
        tally.observe(event)

    line = summary_line(tally, "3f2a", 0.44).plain

    assert line == "completed · 2 rounds · 1,234 tokens (1,100 in / 134 out) · 0.4 s · run 3f2a"


def test_the_summary_of_a_failed_run_sums_the_rounds_reported() -> None:
    tally = Tally()
    usage = Usage(prompt_tokens=10, completion_tokens=2, total_tokens=12)
    for event in (
        RunnerProgress(round_count=1),
        RoundCompleted(round=1, usage=usage, latency_ms=5, model="m"),
        Error(message="bad key", code="model_auth_error", ts=datetime.now(UTC)),
    ):
        tally.observe(event)

    line = summary_line(tally, "r", 1.0).plain

    assert line == "error · 1 round · 12 tokens (10 in / 2 out) · 1.0 s · run r"


def test_a_tool_result_shows_under_its_line_cut_to_ten_lines_of_160_characters() -> None:
    screen = Screen()
    listing = "\n".join(f"file{i}.txt" for i in range(1, 13)) + "\n"
    screen.show(
        tool_start("list_dir"),
        ToolComplete(tool_call_id="c1", tool_name="list_dir", result=listing, elapsed_ms=3),
        tool_start("read_file"),
        ToolComplete(tool_call_id="c1", tool_name="read_file", result="x" * 161, elapsed_ms=1),
    )

    assert screen.err.splitlines() == [
        "▸ list_dir {} running…",
        "✓ list_dir 3 ms",
        *(f"    file{i}.txt" for i in range(1, 11)),
        "    … 2 more lines",
        "▸ read_file {} running…",
        "✓ read_file 1 ms",
        "    " + "x" * 159 + "…",
    ]


def test_a_result_streamed_as_output_is_not_shown_again() -> None:
    screen = Screen()
    screen.show(
        tool_start(),
        ToolToken(tool_call_id="c1", content="hello\n"),
        ToolComplete(tool_call_id="c1", tool_name="bash", result="hello\n", elapsed_ms=5),
    )

    assert screen.err.splitlines() == ["▸ bash {} running…", "    hello", "✓ bash 5 ms"]
