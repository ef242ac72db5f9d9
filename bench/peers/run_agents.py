"""The OpenAI Agents SDK's runner for bench/peers.py: ``Runner.run_streamed`` on its Chat
Completions model, tracing off (it would export to the public endpoint), every stream event read.

Runs under bench/.venv-peers (bench/setup_peers.sh)::

    bench/.venv-peers/bin/python bench/peers/run_agents.py seq --base-url http://127.0.0.1:9100/v1
"""

from __future__ import annotations

import argparse

import harness
from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI
from openai.types.responses import ResponseTextDeltaEvent


@function_tool
def noop() -> str:
    """Does nothing and returns 'ok'."""
    return "ok"


class AgentsSDK:
    name = "openai-agents"

    def __init__(self) -> None:
        self.agent: Agent | None = None

    async def start(self, args: argparse.Namespace) -> None:
        set_tracing_disabled(True)
        client = AsyncOpenAI(base_url=args.base_url, api_key="bench")
        model = OpenAIChatCompletionsModel(model="gpt-bench", openai_client=client)
        self.agent = Agent(
            name="bench", instructions="You are a benchmark.", model=model, tools=[noop]
        )

    async def run_once(self, on_token: harness.OnToken) -> None:
        assert self.agent is not None
        result = Runner.run_streamed(self.agent, "Call noop, then answer.")
        async for event in result.stream_events():
            if event.type == "raw_response_event" and isinstance(
                event.data, ResponseTextDeltaEvent
            ):
                on_token(event.data.delta)

    async def close(self) -> None:
        pass


if __name__ == "__main__":
    harness.main(AgentsSDK())
