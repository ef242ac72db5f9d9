"""Context window management over a long session: request sizes, compactions, tokens sent, and
what the budget check costs the loop per round.

One run of ``--rounds`` rounds (default 200) on the agent loop itself (``culm.loop``), with an
in-process model that counts a request's prompt tokens its own way (a quarter of the JSON of
its messages, system prompt and tools: not culm's estimator), refuses a request over its window
as OpenAI does, calls a tool every round whose output is ``--output-tokens`` tokens (default
2000), and answers a summarizer request with a 150-word summary. Two configurations:

* ``managed``: a ``--window``-token window (default 16k), culm's defaults (auto compaction,
  trigger = window - output reserve - working reserve, target 50 %);
* ``unlimited``: no compaction, on a window large enough for everything (the baseline).

Reports per configuration: the prompt size of every request (the agent's and the summarizer's),
compactions and refused requests, total prompt tokens sent; and for ``managed`` the CPU the
budget check adds to a round: the time of ``ContextWindow.prepare`` (measure, emit, build the
request) less that of building the request as the loop did before (``build_request`` over the
transcript), over the rounds that did not compact (median and p99). Writes the request sizes as
an SVG plot (``--svg``, default ``docs/context_requests.svg``).

    .venv/bin/python bench/context.py                # ~10 s
    .venv/bin/python bench/context.py --json

Figures: ``docs/benchmarks.md`` (section ``context``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from culm.context.budget import ContextLimits
from culm.domain.events import RunEvent, RunEventBase
from culm.domain.models import Message, Session, Usage
from culm.errors import ModelRequestError
from culm.loop.context import ContextSettings, LoopContext, LoopLimits, LoopState
from culm.loop.driver import run_agent
from culm.loop.plan import build_request
from culm.loop.window import SUMMARY_SYSTEM_PROMPT, ContextWindow, default_limits
from culm.providers.base import (
    Finish,
    ModelRequest,
    StreamPart,
    TextDelta,
    ToolCallDelta,
    UsageReport,
)
from culm.tools.base import Tool, ToolContext

TARGET_MS = 0.2
SUMMARY_START = SUMMARY_SYSTEM_PROMPT[:30]


def count_tokens(request: ModelRequest) -> int:
    """The bench model's own count: a quarter of the request's JSON."""
    messages = [message.model_dump(mode="json") for message in request.messages]
    tools = [
        {"name": t.name, "description": t.description, "parameters": t.parameters}
        for t in request.tools
    ]
    return (
        len(json.dumps({"system": request.system_prompt, "messages": messages, "tools": tools}))
        // 4
    )


@dataclass
class BenchModel:
    window: int
    rounds: int
    sizes: list[tuple[str, int]] = field(default_factory=list)  # (kind, prompt tokens)
    refused: int = 0
    calls: int = 0

    @property
    def name(self) -> str:
        return "bench:model"

    @property
    def max_context_tokens(self) -> int | None:
        return self.window

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamPart]:
        tokens = count_tokens(request)
        summarizing = (request.system_prompt or "").startswith(SUMMARY_START)
        if tokens > self.window:
            self.refused += 1
            raise ModelRequestError(
                f"bench API error (HTTP 400): This model's maximum context length is "
                f"{self.window} tokens. However, your messages resulted in {tokens} tokens.",
                status=400,
            )
        self.sizes.append(("summary" if summarizing else "agent", tokens))
        if summarizing:
            text = "The agent read outputs and noted facts. " * 25
            yield TextDelta(text=text)
        else:
            self.calls += 1
            if self.calls < self.rounds:
                yield ToolCallDelta(index=0, id=f"c{self.calls}", name="big", arguments="{}")
            else:
                yield TextDelta(text="done")
        completion = 250 if summarizing else 20
        yield UsageReport(
            usage=Usage(
                prompt_tokens=tokens, completion_tokens=completion, total_tokens=tokens + completion
            )
        )
        yield Finish(reason="stop")


class BigTool(Tool):
    name: ClassVar[str] = "big"
    description: ClassVar[str] = "A large output."
    parameters: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}
    read_only: ClassVar[bool] = True

    def __init__(self, tokens: int) -> None:
        self.chars = tokens * 4
        self.n = 0

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        self.n += 1
        line = f"row {self.n}: " + "value " * 12 + "\n"
        return (line * (self.chars // len(line) + 1))[: self.chars]


class Timing:
    """Wraps ``ContextWindow.prepare`` to time it, and the old request building beside it."""

    def __init__(self) -> None:
        self.added_ms: list[float] = []
        self.compacting_rounds = 0

    def install(self) -> None:
        original = ContextWindow.prepare
        timing = self

        async def prepare(window: ContextWindow) -> ModelRequest:
            version = window._version
            started = time.perf_counter()
            request = await original(window)
            elapsed = time.perf_counter() - started
            if window._version != version:
                timing.compacting_rounds += 1
                return request
            ctx, view = window._ctx, window.view()
            started = time.perf_counter()
            build_request(ctx.session.system_prompt, view, (t.spec() for t in ctx.tools.values()))
            baseline = time.perf_counter() - started
            timing.added_ms.append((elapsed - baseline) * 1000)
            return request

        ContextWindow.prepare = prepare  # type: ignore[method-assign]


async def run(
    limits: ContextLimits, model_window: int, rounds: int, output_tokens: int
) -> dict[str, Any]:
    model = BenchModel(window=model_window, rounds=rounds)
    events: list[RunEventBase] = []

    def emit(event: RunEventBase) -> RunEvent:
        events.append(event)
        return event  # type: ignore[return-value]

    async def append(messages: Sequence[Message]) -> None:
        return None

    tool = BigTool(output_tokens)
    ctx = LoopContext(
        session=Session(
            session_id="bench",
            model=model.name,
            workspace="/tmp",
            system_prompt="You are a bench agent.",
        ),
        model=model,
        tools={tool.name: tool},
        workspace=Path("/tmp"),
        limits=LoopLimits(max_rounds=rounds + 10),
        emit=emit,
        append_messages=append,
        context=ContextSettings(limits=limits),
    )
    state = LoopState(messages=[])
    from culm.domain.models import UserMessage

    state.messages.append(UserMessage(content="Read the outputs, one per round."))
    started = time.process_time()
    await run_agent(ctx, state)
    cpu = time.process_time() - started
    agent = [size for kind, size in model.sizes if kind == "agent"]
    compactions = [e for e in events if e.type == "context_compacted"]
    return {
        "rounds": state.round,
        "agent_requests": agent,
        "summary_requests": [size for kind, size in model.sizes if kind == "summary"],
        "max_request": max(agent),
        "compactions": len(compactions),
        "strategies": dict(Counter(e.strategy for e in compactions)),  # type: ignore[attr-defined]
        "refused": model.refused,
        "prompt_tokens_sent": state.usage.prompt_tokens,
        "total_tokens": state.usage.total_tokens,
        "cpu_s": round(cpu, 2),
    }


def svg(managed: list[int], unlimited: list[int], window: int, path: Path) -> None:
    """Two panels: both configurations (linear scale), then culm's alone against its window."""
    both = _panel(
        [
            (unlimited, "#c0392b", "no compaction, unlimited window"),
            (managed, "#2471a3", f"culm, {window // 1000}k window, auto compaction"),
        ],
        window,
        max(max(unlimited), window) * 1.05,
        0,
    )
    alone = _panel(
        [
            (
                managed,
                "#2471a3",
                f"culm alone: compactions keep every request under {window // 1000}k",
            )
        ],
        window,
        window * 1.1,
        340,
    )
    title = f"Prompt tokens per request over {len(managed)} rounds (2k-token tool outputs)"
    head = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="720" height="700" font-family="sans-serif">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="360" y="20" font-size="13" text-anchor="middle">{title}</text>',
    ]
    path.write_text("\n".join([*head, *both, *alone, "</svg>"]) + "\n")


def _panel(
    series: list[tuple[list[int], str, str]], window: int, top: float, offset: int
) -> list[str]:
    width, height, pad = 720, 340, 50
    n = max(len(values) for values, _, _ in series)

    def x(i: float) -> float:
        return pad + (width - 2 * pad) * i / max(1, n - 1)

    def y(v: float) -> float:
        return offset + height - pad - (height - 2 * pad) * v / top

    out = [
        f'<line x1="{pad}" y1="{y(0)}" x2="{width - pad}" y2="{y(0)}" stroke="black"/>',
        f'<line x1="{pad}" y1="{y(top)}" x2="{pad}" y2="{y(0)}" stroke="black"/>',
        f'<line x1="{pad}" y1="{y(window):.1f}" x2="{width - pad}" y2="{y(window):.1f}" '
        'stroke="gray" stroke-dasharray="4 3"/>',
        f'<text x="{width - pad}" y="{y(window) - 4:.1f}" font-size="10" text-anchor="end">'
        f"{window // 1000}k window</text>",
        f'<text x="{width / 2}" y="{y(0) + 28:.1f}" font-size="11" text-anchor="middle">round</text>',
    ]
    for k in range(6):
        v = top * k / 5
        out.append(
            f'<text x="{pad - 6}" y="{y(v):.1f}" font-size="10" text-anchor="end">'
            f"{v / 1000:.0f}k</text>"
        )
    for k in range(5):
        i = int((n - 1) * k / 4)
        out.append(
            f'<text x="{x(i):.1f}" y="{y(0) + 14:.1f}" font-size="10" text-anchor="middle">'
            f"{i + 1}</text>"
        )
    for row, (values, color, label) in enumerate(series):
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}"/>')
        out.append(
            f'<text x="{pad + 10}" y="{y(top) + 12 + 16 * row:.1f}" font-size="11" '
            f'fill="{color}">{label}</text>'
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--output-tokens", type=int, default=2000)
    parser.add_argument("--window", type=int, default=16_000)
    parser.add_argument("--svg", type=Path, default=Path("docs/context_requests.svg"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    timing = Timing()
    timing.install()
    managed = asyncio.run(
        run(default_limits(args.window), args.window, args.rounds, args.output_tokens)
    )
    added = sorted(timing.added_ms)
    managed["budget_check_ms"] = {
        "median": round(statistics.median(added), 4),
        "p99": round(added[int(len(added) * 0.99) - 1], 4),
        "rounds": len(added),
        "compacting_rounds": timing.compacting_rounds,
    }
    big = 10_000_000
    unlimited_limits = ContextLimits(
        window=big, output_reserve=8192, working_reserve=2048, auto_compact=False
    )
    unlimited = asyncio.run(run(unlimited_limits, big, args.rounds, args.output_tokens))
    svg(managed["agent_requests"], unlimited["agent_requests"], args.window, args.svg)
    result = {
        "managed": managed,
        "unlimited": unlimited,
        "ratio_sent": round(managed["prompt_tokens_sent"] / unlimited["prompt_tokens_sent"], 3),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for name in ("managed", "unlimited"):
            r = result[name]
            print(
                f"{name:9}  rounds {r['rounds']}  max request {r['max_request']}  compactions "
                f"{r['compactions']} {r['strategies']}  refused {r['refused']}  prompt tokens sent "
                f"{r['prompt_tokens_sent']}  summarizer calls {len(r['summary_requests'])}  cpu {r['cpu_s']} s"
            )
        check = managed["budget_check_ms"]
        verdict = "ok" if check["median"] < TARGET_MS else "MISS"
        print(
            f"budget check added per round: median {check['median']} ms, p99 {check['p99']} ms "
            f"over {check['rounds']} rounds (target < {TARGET_MS} ms: {verdict}); "
            f"sent {result['ratio_sent']}x the tokens of the unlimited run; plot: {args.svg}"
        )
    ok = (
        managed["refused"] == 0
        and managed["rounds"] == args.rounds
        and managed["max_request"] <= args.window
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
