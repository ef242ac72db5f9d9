"""pydantic-ai's runner for bench/peers.py: ``Agent.run_stream_events`` on its OpenAI Chat model,
every event read (a text part's first piece comes in its start event, the rest as deltas).

Runs under bench/.venv-peers (bench/setup_peers.sh)::

    bench/.venv-peers/bin/python bench/peers/run_pydantic_ai.py seq --base-url http://127.0.0.1:9100/v1
"""

from __future__ import annotations

import argparse

import harness
from pydantic_ai import Agent
from pydantic_ai.messages import PartDeltaEvent, PartStartEvent, TextPart, TextPartDelta
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider


def noop() -> str:
    """Does nothing and returns 'ok'."""
    return "ok"


class PydanticAI:
    name = "pydantic-ai"

    def __init__(self) -> None:
        self.agent: Agent | None = None

    async def start(self, args: argparse.Namespace) -> None:
        provider = OpenAIProvider(base_url=args.base_url, api_key="bench")
        model = OpenAIChatModel("gpt-bench", provider=provider)
        self.agent = Agent(model, instructions="You are a benchmark.", tools=[noop])

    async def run_once(self, on_token: harness.OnToken) -> None:
        assert self.agent is not None
        async with self.agent.run_stream_events("Call noop, then answer.") as events:
            async for event in events:
                if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
                    if event.part.content:
                        on_token(event.part.content)
                elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
                    on_token(event.delta.content_delta)

    async def close(self) -> None:
        pass


if __name__ == "__main__":
    harness.main(PydanticAI())
