"""Seeded random runs for the accuracy test, as replies of the fake upstream, with the usage the
client is known to receive from each reply.

Every chunk of a reply is sent before the reply ends (``complete``, ``cut`` or ``stall``), so
the usage a reply reports is the usage in its chunks — no guessing about what crossed the wire
before a cut. A run's first user message is its key (``run-<n>``); :class:`RoutedUpstream`
answers each request from its run's own queue, so runs can go concurrently, and records which
replies it served.
"""

from __future__ import annotations

import random
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from culm.domain.models import Usage
from tests.providers.fakes import (
    FakeUpstream,
    Recorded,
    Reply,
    anthropic_events,
    json_reply,
    openai_events,
)

MODELS = ("openai:gpt-alpha", "openai:gpt-beta", "anthropic:claude-alpha", "anthropic:claude-beta")
MARKER = "<<cancel-here>>"
TOOLS = ("probe", "explode", "missing")  # succeeds, raises, is not enabled


@dataclass
class Scripted:
    reply: Reply
    usage: Usage  # what the client receives from this reply (zero when none)


@dataclass
class Plan:
    key: str
    model: str
    replies: list[Scripted] = field(default_factory=list)
    cancel: bool = False
    kinds: list[str] = field(default_factory=list)


class RoutedUpstream(FakeUpstream):
    def __init__(self) -> None:
        super().__init__()
        self.queues: dict[str, deque[Scripted]] = {}
        self.served: defaultdict[str, list[Scripted]] = defaultdict(list)

    def add(self, plan: Plan) -> None:
        self.queues[plan.key] = deque(plan.replies)

    def next_reply(self, request: Recorded) -> Reply:
        key = _run_key(request.json())
        queue = self.queues.get(key)
        if not queue:
            return json_reply(400, {"error": {"message": f"nothing scripted for {key!r}"}})
        scripted = queue.popleft()
        self.served[key].append(scripted)
        return scripted.reply


def _run_key(body: dict[str, Any]) -> str:
    for message in body["messages"]:
        if message["role"] == "user":
            content = message["content"]
            if isinstance(content, list):
                content = "".join(block.get("text", "") for block in content)
            return str(content)
    return ""


# Plans


def make_plan(rng: random.Random, index: int) -> Plan:
    model = rng.choice(MODELS)
    plan = Plan(key=f"run-{index}", model=model)
    wire = OpenAIWire(rng) if model.startswith("openai:") else AnthropicWire(rng)
    rounds = rng.choice((1, 1, 2, 2, 3))
    for number in range(1, rounds + 1):
        last = number == rounds
        failures = rng.choice((0, 0, 0, 1, 2))
        for _ in range(failures):
            plan.replies.append(_failure(rng, wire, plan))
        if not last:
            plan.replies.append(wire.tool_turn(rng.sample(TOOLS, rng.choice((1, 2)))))
            plan.kinds.append("tools")
            continue
        _last_turn(rng, wire, plan, failures)
    return plan


def _failure(rng: random.Random, wire: Wire, plan: Plan) -> Scripted:
    kind = rng.choice(("429", "500", "cut_before_output", "error_before_output"))
    plan.kinds.append(kind)
    if kind == "429":
        return Scripted(
            json_reply(429, {"error": {"message": "slow down"}}, {"retry-after": "0"}), Usage()
        )
    if kind == "500":
        return Scripted(json_reply(500, {"error": {"message": "upstream broke"}}), Usage())
    if kind == "cut_before_output":
        return wire.before_output(end="cut")
    return wire.before_output(end="error")


def _last_turn(rng: random.Random, wire: Wire, plan: Plan, failures: int) -> None:
    kind = rng.choice(("final", "final", "cut_after_output", "cancel", "exhaust", "fatal"))
    plan.kinds.append(kind)
    if kind == "final":
        plan.replies.append(wire.text_turn(end="complete"))
    elif kind == "cut_after_output":
        plan.replies.append(wire.text_turn(end="cut"))
    elif kind == "cancel":
        plan.cancel = True
        plan.replies.append(wire.text_turn(end="stall"))
    elif kind == "exhaust":  # every attempt left fails: the run ends with a partial round
        for _ in range(3 - failures):
            plan.replies.append(wire.before_output(end="cut"))
    else:
        plan.replies.append(
            Scripted(json_reply(400, {"error": {"message": "bad request"}}), Usage())
        )


# Wire formats


class Wire:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.calls = 0

    def tool_turn(self, tools: list[str]) -> Scripted:
        raise NotImplementedError

    def text_turn(self, *, end: str) -> Scripted:
        raise NotImplementedError

    def before_output(self, *, end: str) -> Scripted:
        raise NotImplementedError

    def _text(self) -> list[str]:
        return [f"word{self.rng.randrange(1000)} " for _ in range(self.rng.randint(1, 4))]


class OpenAIWire(Wire):
    def _usage(self) -> tuple[dict[str, Any], Usage]:
        prompt, completion = self.rng.randint(1, 5000), self.rng.randint(1, 800)
        cached, reasoning = self.rng.randint(0, prompt), self.rng.randint(0, completion)
        chunk = {
            "choices": [],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached},
                "completion_tokens_details": {"reasoning_tokens": reasoning},
            },
        }
        usage = Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            cache_read_tokens=cached,
            reasoning_tokens=reasoning,
        )
        return chunk, usage

    @staticmethod
    def _delta(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def tool_turn(self, tools: list[str]) -> Scripted:
        chunk, usage = self._usage()
        deltas = []
        for index, name in enumerate(tools):
            self.calls += 1
            call = {"index": index, "id": f"call_{self.calls}", "type": "function"}
            call["function"] = {"name": name, "arguments": "{}"}
            deltas.append(self._delta({"tool_calls": [call]}))
        events = openai_events(*deltas, self._delta({}, "tool_calls"), chunk, "[DONE]")
        return Scripted(Reply(chunks=events), usage)

    def text_turn(self, *, end: str) -> Scripted:
        texts = [self._delta({"content": text}) for text in self._text()]
        if end == "complete":
            chunk, usage = self._usage()
            events = [*texts, self._delta({}, "stop"), chunk, "[DONE]"]
            return Scripted(Reply(chunks=openai_events(*events)), usage)
        if end == "stall":  # usage (maybe), then the marker the test cancels on, then nothing
            chunk, usage = self._usage() if self.rng.random() < 0.7 else (None, Usage())
            head = [*texts, chunk] if chunk else texts
            events = openai_events(*head, self._delta({"content": MARKER}))
            return Scripted(Reply(chunks=events, end="stall"), usage)
        chunk, usage = self._usage() if self.rng.random() < 0.5 else (None, Usage())
        events = openai_events(*texts, *([chunk] if chunk else []))
        return Scripted(Reply(chunks=events, end="cut"), usage)

    def before_output(self, *, end: str) -> Scripted:
        """A reply that fails before any text (so it is retried); usage maybe sent first."""
        chunk, usage = self._usage() if self.rng.random() < 0.5 else (None, Usage())
        head = [self._delta({"role": "assistant", "content": ""}), *([chunk] if chunk else [])]
        if end == "error":
            head.append({"error": {"message": "overloaded", "type": "server_error"}})
        return Scripted(Reply(chunks=openai_events(*head), end="cut"), usage)


class AnthropicWire(Wire):
    def _start(self) -> tuple[dict[str, Any], dict[str, int]]:
        raw = {
            "input_tokens": self.rng.randint(1, 5000),
            "output_tokens": 1,
            "cache_read_input_tokens": self.rng.randint(0, 3000),
            "cache_creation_input_tokens": self.rng.randint(0, 1000),
        }
        return {"type": "message_start", "message": {"usage": dict(raw)}}, raw

    def _delta(self, raw: dict[str, int], stop: str) -> dict[str, Any]:
        raw["output_tokens"] = self.rng.randint(1, 800)
        usage = {"output_tokens": raw["output_tokens"]}
        return {"type": "message_delta", "delta": {"stop_reason": stop}, "usage": usage}

    @staticmethod
    def _usage(raw: dict[str, int] | None) -> Usage:
        if raw is None:
            return Usage()
        read, write = raw["cache_read_input_tokens"], raw["cache_creation_input_tokens"]
        prompt = raw["input_tokens"] + read + write
        completion = raw["output_tokens"]
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            cache_read_tokens=read,
            cache_write_tokens=write,
        )

    def _text_blocks(self, texts: list[str]) -> list[dict[str, Any]]:
        start = {"type": "content_block_start", "index": 0}
        start["content_block"] = {"type": "text", "text": ""}
        deltas = [
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}
            for t in texts
        ]
        return [start, *deltas]

    def tool_turn(self, tools: list[str]) -> Scripted:
        start, raw = self._start()
        events: list[dict[str, Any]] = [start]
        for index, name in enumerate(tools):
            self.calls += 1
            block = {"type": "tool_use", "id": f"tu_{self.calls}", "name": name, "input": {}}
            events += [
                {"type": "content_block_start", "index": index, "content_block": block},
                {"type": "content_block_stop", "index": index},
            ]
        events += [self._delta(raw, "tool_use"), {"type": "message_stop"}]
        return Scripted(Reply(chunks=anthropic_events(*events)), self._usage(raw))

    def text_turn(self, *, end: str) -> Scripted:
        start, raw = self._start()
        events = [start, *self._text_blocks(self._text())]
        if end == "complete":
            events += [{"type": "content_block_stop", "index": 0}, self._delta(raw, "end_turn")]
            events.append({"type": "message_stop"})
            return Scripted(Reply(chunks=anthropic_events(*events)), self._usage(raw))
        if self.rng.random() < 0.5:  # the cumulative output count arrives before the cut
            events.append(self._delta(raw, "end_turn"))
        if end == "stall":
            marker = {"type": "text_delta", "text": MARKER}
            events.append({"type": "content_block_delta", "index": 0, "delta": marker})
        return Scripted(Reply(chunks=anthropic_events(*events), end=end), self._usage(raw))

    def before_output(self, *, end: str) -> Scripted:
        start, raw = self._start()
        events = [start] if self.rng.random() < 0.7 else []
        if end == "error":
            events.append(
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            )
        return Scripted(
            Reply(chunks=anthropic_events(*events), end="cut"),
            self._usage(raw if events[:1] == [start] else None),
        )
