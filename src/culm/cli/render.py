"""Showing a run to a person or a program.

:class:`HumanOutput` writes the assistant's answer to stdout as it streams and everything else
(reasoning, tool calls, their live output or the start of their results, notices, the closing
summary) to stderr, so that
``culm run … > answer.txt`` keeps only the answer. :class:`JsonOutput` writes every run event as
one JSON line on stdout. Styling comes from rich, which writes no ANSI codes when stderr is not a
terminal; ``NO_COLOR`` turns styling off entirely.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from rich.console import Console
from rich.text import Text

from culm.domain.events import (
    Cancelled,
    Complete,
    Error,
    ReasoningToken,
    RoundCompleted,
    RunEvent,
    RunnerProgress,
    SubAgentCompleted,
    SubAgentStarted,
    Token,
    ToolComplete,
    ToolError,
    ToolStart,
    ToolToken,
    event_to_json,
)
from culm.domain.models import Usage

ARGUMENTS_WIDTH = 100
ERROR_WIDTH = 200
# A tool's result is shown under its line, cut to this many lines of at most this many characters.
RESULT_LINES = 10
RESULT_WIDTH = 160
INDENT = "    "
STATUS_WORDS = {"complete": "completed", "cancelled": "cancelled", "error": "error"}
STATUS_STYLES = {"completed": "bold green", "cancelled": "bold yellow", "error": "bold red"}
_LINES = re.compile(r"[^\n]*\n|[^\n]+")


def stderr_console() -> Console:
    """The console for everything but the answer: styled on a terminal, plain otherwise."""
    plain = bool(os.environ.get("NO_COLOR"))
    return Console(
        stderr=True,
        highlight=False,
        soft_wrap=True,
        color_system=None if plain else "auto",
    )


def shorten(text: str, width: int) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``width`` characters with "…"."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def format_arguments(arguments: Any) -> str:
    if isinstance(arguments, str):
        return shorten(arguments, ARGUMENTS_WIDTH)
    return shorten(json.dumps(arguments, ensure_ascii=False), ARGUMENTS_WIDTH)


def result_preview(result: str) -> list[str]:
    """A tool's result as the lines to show: the first ``RESULT_LINES``, each cut to
    ``RESULT_WIDTH`` characters, and how many more there are."""
    lines = result.rstrip("\n").splitlines()
    shown = [
        line if len(line) <= RESULT_WIDTH else line[: RESULT_WIDTH - 1] + "…"
        for line in lines[:RESULT_LINES]
    ]
    hidden = len(lines) - len(shown)
    if hidden:
        shown.append(f"… {hidden} more line" + ("" if hidden == 1 else "s"))
    return shown


@dataclass
class Tally:
    """What the closing summary needs, gathered from the events as they pass."""

    rounds: int = 0
    usage: Usage = field(default_factory=Usage)
    terminal: Complete | Cancelled | Error | None = None

    def observe(self, event: RunEvent) -> None:
        if isinstance(event, RunnerProgress):
            self.rounds = max(self.rounds, event.round_count)
        elif isinstance(event, RoundCompleted):
            self.usage += event.usage
        elif isinstance(event, Complete):
            self.usage = event.usage
        if isinstance(event, Complete | Cancelled | Error):
            self.terminal = event

    @property
    def status(self) -> str:
        return STATUS_WORDS[self.terminal.type] if self.terminal else "unfinished"


def summary_line(tally: Tally, run_id: str, seconds: float) -> Text:
    """``completed · 2 rounds · 1,234 tokens (1,100 in / 134 out) · 0.4 s · run <id>``."""
    usage = tally.usage
    total = usage.total_tokens or usage.prompt_tokens + usage.completion_tokens
    rounds = f"{tally.rounds} round" + ("" if tally.rounds == 1 else "s")
    tokens = f"{total:,} tokens ({usage.prompt_tokens:,} in / {usage.completion_tokens:,} out)"
    return Text.assemble(
        (tally.status, STATUS_STYLES.get(tally.status, "bold")),
        (f" · {rounds} · {tokens} · {seconds:.1f} s · run {run_id}", "dim"),
    )


class Output(Protocol):
    def event(self, event: RunEvent) -> None: ...

    def notice(self, text: str) -> None: ...

    def finish(self, tally: Tally, run_id: str, seconds: float) -> None: ...


class JsonOutput:
    """Every event as one JSON line on stdout; stderr only for notices and a failed run."""

    def __init__(self, out: TextIO, err: Console) -> None:
        self._out = out
        self._err = err

    def event(self, event: RunEvent) -> None:
        self._out.write(event_to_json(event) + "\n")
        self._out.flush()
        if isinstance(event, Error):
            self._err.print(Text(f"error: {event.message}", style="bold red"))

    def notice(self, text: str) -> None:
        self._err.print(Text(text, style="yellow"))

    def finish(self, tally: Tally, run_id: str, seconds: float) -> None:
        pass


class HumanOutput:
    """The answer streamed on stdout; reasoning, tools, notices and the summary on stderr.

    Both streams may share one terminal, so a line left open on one is ended before the other
    writes: ``_block`` names what the open line belongs to (``answer``, ``reasoning``,
    ``tool:<call id>``).
    """

    def __init__(self, out: TextIO, err: Console) -> None:
        self._out = out
        self._err = err
        self._block: str | None = None
        self._open = False
        self._streamed: set[str] = set()  # tool calls whose output was shown as it came
        self._handlers: dict[str, Callable[[Any], None]] = {
            "token": self._token,
            "reasoning_token": self._reasoning,
            "tool_start": self._tool_start,
            "tool_token": self._tool_token,
            "tool_complete": self._tool_complete,
            "tool_error": self._tool_error,
            "sub_agent_started": self._sub_agent_started,
            "sub_agent_completed": self._sub_agent_completed,
            "cancelled": self._cancelled,
            "error": self._error,
        }

    def event(self, event: RunEvent) -> None:
        handler = self._handlers.get(event.type)
        if handler is not None:
            handler(event)

    def notice(self, text: str) -> None:
        self._line(Text(text, style="yellow"))

    def finish(self, tally: Tally, run_id: str, seconds: float) -> None:
        self._line(summary_line(tally, run_id, seconds))

    # Streams of text

    def _token(self, event: Token) -> None:
        self._enter("answer")
        self._out.write(event.content)
        self._out.flush()
        self._track(event.content)

    def _reasoning(self, event: ReasoningToken) -> None:
        self._enter("reasoning")
        self._err.print(Text(event.content, style="dim italic"), end="")
        self._track(event.content)

    def _tool_token(self, event: ToolToken) -> None:
        self._streamed.add(event.tool_call_id)
        self._enter(f"tool:{event.tool_call_id}")
        text = Text(style="dim")
        for line in _LINES.findall(event.content):
            text.append(line if self._open else INDENT + line)
            self._track(line)
        self._err.print(text, end="")

    # Whole lines

    def _tool_start(self, event: ToolStart) -> None:
        arguments = format_arguments(event.arguments)
        self._line(
            Text.assemble(
                ("▸ ", "cyan"),
                (event.tool_name, "bold"),
                (f" {arguments}", "dim"),
                (" running…", "cyan"),
            )
        )

    def _tool_complete(self, event: ToolComplete) -> None:
        elapsed = f" {event.elapsed_ms} ms"
        self._line(Text.assemble(("✓ ", "green"), (event.tool_name, "bold"), (elapsed, "dim")))
        if event.tool_call_id not in self._streamed:  # else it was shown as it came
            for line in result_preview(event.result):
                self._err.print(Text(INDENT + line, style="dim"))
        self._streamed.discard(event.tool_call_id)

    def _tool_error(self, event: ToolError) -> None:
        self._streamed.discard(event.tool_call_id)
        self._line(
            Text.assemble(
                ("✗ ", "red"),
                (event.tool_name, "bold"),
                (f": {shorten(event.error, ERROR_WIDTH)}", "red"),
                (f" {event.elapsed_ms} ms", "dim"),
            )
        )

    def _sub_agent_started(self, event: SubAgentStarted) -> None:
        title = f" {shorten(event.title, ARGUMENTS_WIDTH)}" if event.title else ""
        self._line(Text(f"▸ sub-agent{title} (run {event.child_run_id})", style="cyan"))

    def _sub_agent_completed(self, event: SubAgentCompleted) -> None:
        ok = event.status == "completed"
        error = f": {shorten(event.error, ERROR_WIDTH)}" if event.error else ""
        text = f"{'✓' if ok else '✗'} sub-agent {event.status}{error} (run {event.child_run_id})"
        self._line(Text(text, style="green" if ok else "red"))

    def _cancelled(self, event: Cancelled) -> None:
        self._line(Text(f"cancelled: {event.reason}", style="yellow"))

    def _error(self, event: Error) -> None:
        self._line(Text(f"error: {event.message}", style="bold red"))

    # Line bookkeeping

    def _line(self, text: Text) -> None:
        self._enter(None)
        self._err.print(text)

    def _enter(self, block: str | None) -> None:
        if block == self._block:
            return
        if self._open:
            if self._block == "answer":
                self._out.write("\n")
                self._out.flush()
            else:
                self._err.print()
        self._block, self._open = block, False

    def _track(self, written: str) -> None:
        if written:
            self._open = not written.endswith("\n")
