"""``scripted:<name>``: a deterministic model for demos and tests, no network.

A script is a list of turns; a turn is a list of steps. The turn played is the number of
assistant messages since the last user message (so round 1 plays turn 0, round 2 turn 1 …).
Past the last turn the model answers with a fixed final text, or repeats the last turn when
``repeat_last`` is set. Steps::

    {"text": "Hello", "chunk_size": 4}           text, streamed in pieces
    {"reasoning": "Thinking…"}                   reasoning text
    {"tool_call": {"name": "bash", "arguments": {"command": "ls"}}}
    {"delay": 0.5}                               wait (cancellable; long delays look like a stall)
    {"error": {"status": 429, "message": "slow down", "retry_after": 0.1}, "times": 1}
    {"error": {"kind": "connection"}}            also "auth", "request", "stall"
    {"echo": true}                               "You said: <last user message>"
    {"usage": {"prompt_tokens": 10, "completion_tokens": 2}}   report this usage instead

An error step fails the first ``times`` attempts of its turn (default: every attempt). Usage is
reported at the end like a real provider: by default ``prompt_tokens`` is a quarter of the
request's characters and ``completion_tokens`` a quarter of the generated ones (at least 1).

Scripts come from the built-ins below, ``$CULM_HOME/scripts/<name>.json``, or
:meth:`ScriptLibrary.register`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from culm.domain.models import AssistantMessage, Usage, UserMessage
from culm.errors import (
    ModelAuthError,
    ModelConnectionError,
    ModelError,
    ModelHTTPError,
    ModelRequestError,
    ModelStallError,
    UnknownModelError,
)
from culm.providers.base import (
    Finish,
    ModelRequest,
    ReasoningDelta,
    StreamPart,
    TextDelta,
    ToolCallDelta,
    UsageReport,
)

END_OF_SCRIPT = "(end of script)"
# A script file is $CULM_HOME/scripts/<name>.json: no path separators, no "..".
_SCRIPT_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")


class Script(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    turns: list[list[dict[str, Any]]]
    repeat_last: bool = False
    max_context_tokens: int | None = Field(default=None, ge=1)


BUILTIN_SCRIPTS: dict[str, Script] = {
    "echo": Script(turns=[[{"echo": True}]]),
    "demo": Script(
        turns=[
            [
                {"reasoning": "The user asked about the workspace. I will list it first."},
                {"text": "Let me look at the workspace.", "chunk_size": 6},
                {"tool_call": {"name": "list_dir", "arguments": {"path": "."}}},
            ],
            [
                {
                    "text": "Done: the listing above shows what the workspace holds "
                    "(this answer comes from the scripted demo model).",
                    "chunk_size": 8,
                }
            ],
        ],
        max_context_tokens=128_000,
    ),
    "slow": Script(
        turns=[[{"delay": 0.05}, {"text": "tick "}] * 200 + [{"text": "done"}]],
    ),
}


class ScriptLibrary:
    def __init__(self, directory: Path | None = None) -> None:
        self._directory = directory
        self._scripts = dict(BUILTIN_SCRIPTS)

    def register(self, name: str, script: Script | dict[str, Any]) -> None:
        self._scripts[name] = script if isinstance(script, Script) else Script(**script)

    def get(self, name: str) -> Script:
        if name in self._scripts:
            return self._scripts[name]
        if not _SCRIPT_NAME.fullmatch(name):
            raise UnknownModelError(
                f"invalid scripted model name {name!r} (letters, digits, '_', '-', '.')"
            )
        path = self._directory / f"{name}.json" if self._directory else None
        if path is not None and path.is_file():
            try:
                return Script.model_validate_json(path.read_bytes())
            except ValidationError as exc:
                raise UnknownModelError(f"scripted model {name!r}: invalid {path}: {exc}") from exc
        known = ", ".join(sorted(self._scripts))
        where = f" or {self._directory}/{name}.json" if self._directory else ""
        raise UnknownModelError(f"unknown scripted model {name!r} (built in: {known}{where})")


class ScriptedModel:
    def __init__(self, name: str, script: Script) -> None:
        self._name = name
        self._script = script
        self._attempts: Counter[int] = Counter()

    @property
    def name(self) -> str:
        return self._name

    @property
    def max_context_tokens(self) -> int | None:
        return self._script.max_context_tokens

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamPart]:
        index = _turn_index(request)
        turn = self._turn(index)
        self._attempts[index] += 1
        generated = 0
        calls = 0
        usage: Usage | None = None
        for step in turn:
            async for part in self._play(step, request, self._attempts[index], calls):
                if isinstance(part, UsageReport):
                    usage = part.usage
                    continue
                if isinstance(part, TextDelta | ReasoningDelta):
                    generated += len(part.text)
                calls += isinstance(part, ToolCallDelta)
                yield part
        has_calls = any("tool_call" in step for step in turn)
        yield UsageReport(usage=usage or _default_usage(request, generated))
        yield Finish(reason="tool_calls" if has_calls else "stop")

    def _turn(self, index: int) -> list[dict[str, Any]]:
        turns = self._script.turns
        if index < len(turns):
            return turns[index]
        if self._script.repeat_last and turns:
            return turns[-1]
        return [{"text": END_OF_SCRIPT}]

    async def _play(
        self, step: dict[str, Any], request: ModelRequest, attempt: int, call_index: int
    ) -> AsyncIterator[StreamPart]:
        if "delay" in step:
            await asyncio.sleep(float(step["delay"]))
        if "error" in step and attempt <= int(step.get("times", 1_000_000)):
            raise _error(step["error"])
        if step.get("echo"):
            yield TextDelta(text=f"You said: {_last_user_text(request)}")
        if "reasoning" in step:
            yield ReasoningDelta(text=str(step["reasoning"]))
        if "text" in step:
            text, size = str(step["text"]), int(step.get("chunk_size", 0)) or None
            for start in range(0, len(text), size or max(len(text), 1)):
                yield TextDelta(text=text[start : start + (size or len(text))])
        if "tool_call" in step:
            yield _tool_call(step["tool_call"], request, call_index)
        if "usage" in step:
            usage = dict(step["usage"])
            usage.setdefault(
                "total_tokens", usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
            )
            yield UsageReport(usage=Usage(**usage))


def _turn_index(request: ModelRequest) -> int:
    count = 0
    for message in reversed(request.messages):
        if isinstance(message, UserMessage):
            break
        if isinstance(message, AssistantMessage):
            count += 1
    return count


def _last_user_text(request: ModelRequest) -> str:
    for message in reversed(request.messages):
        if isinstance(message, UserMessage):
            return message.content
    return ""


def _tool_call(spec: dict[str, Any], request: ModelRequest, call_index: int) -> ToolCallDelta:
    turn = sum(1 for message in request.messages if isinstance(message, AssistantMessage))
    arguments = spec.get("arguments", {})
    return ToolCallDelta(
        index=call_index,
        id=str(spec.get("id") or f"call_{turn}_{call_index}"),
        name=str(spec["name"]),
        arguments=arguments if isinstance(arguments, str) else json.dumps(arguments),
    )


def _error(spec: dict[str, Any]) -> ModelError:
    message = str(spec.get("message", "scripted failure"))
    kind = spec.get("kind")
    status = int(spec.get("status", 500))
    retry_after = spec.get("retry_after")
    if kind == "connection":
        return ModelConnectionError(message)
    if kind == "stall":
        return ModelStallError(message)
    if kind == "auth" or status in (401, 403):
        return ModelAuthError(message, status=status if status in (401, 403) else 401)
    if kind == "request" or status in (400, 404, 422):
        return ModelRequestError(message, status=status if status < 500 else 400)
    return ModelHTTPError(message, status=status, retry_after=retry_after)


def _default_usage(request: ModelRequest, generated: int) -> Usage:
    chars = len(request.system_prompt or "") + sum(
        len(message.model_dump_json()) for message in request.messages
    )
    prompt = max(1, chars // 4)
    completion = max(1, generated // 4)
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )
