"""Fold the parts a model streams into one response record (pure, unit-testable)."""

from __future__ import annotations

from dataclasses import dataclass, field

from culm.domain.events import ReasoningToken, RunEventBase, Token, text_event
from culm.domain.models import AssistantMessage, ToolCall, Usage
from culm.providers.base import (
    Finish,
    ReasoningDelta,
    StreamPart,
    TextDelta,
    ToolCallDelta,
    UsageReport,
)


@dataclass(frozen=True, slots=True)
class ModelResponse:
    message: AssistantMessage
    usage: Usage | None
    finish_reason: str | None
    model: str | None = None  # the model that answered, as the provider named it


@dataclass(slots=True)
class _PartialCall:
    id: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)


class ResponseBuilder:
    """Accumulates stream parts; :meth:`add` returns the live event a part produces, if any."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._signature: str | None = None
        self._calls: dict[int, _PartialCall] = {}
        self._usage: Usage | None = None
        self._finish: str | None = None
        self._model: str | None = None
        self.emitted = False

    def add(self, part: StreamPart) -> RunEventBase | None:
        match part:
            case TextDelta(text=text) if text:
                self._text.append(text)
                self.emitted = True
                return text_event(Token, text)
            case ReasoningDelta(text=text, signature=signature):
                if signature:
                    self._signature = signature
                if text:
                    self._reasoning.append(text)
                    self.emitted = True
                    return text_event(ReasoningToken, text)
            case ToolCallDelta():
                self._add_call(part)
            case UsageReport(usage=usage, model=model):
                self._usage = usage
                self._model = model or self._model
            case Finish(reason=reason):
                self._finish = reason
        return None

    def _add_call(self, part: ToolCallDelta) -> None:
        call = self._calls.setdefault(part.index, _PartialCall())
        if part.id:
            call.id = part.id
        if part.name:
            call.name = part.name
        if part.arguments:
            call.arguments.append(part.arguments)

    @property
    def usage(self) -> Usage | None:
        return self._usage

    def result(self) -> ModelResponse:
        calls = tuple(
            ToolCall(
                id=call.id or f"call_{index}",
                name=call.name or "",
                arguments="".join(call.arguments) or "{}",
            )
            for index, call in sorted(self._calls.items())
        )
        message = AssistantMessage(
            content="".join(self._text),
            reasoning="".join(self._reasoning),
            reasoning_signature=self._signature,
            tool_calls=calls,
        )
        return ModelResponse(
            message=message, usage=self._usage, finish_reason=self._finish, model=self._model
        )
