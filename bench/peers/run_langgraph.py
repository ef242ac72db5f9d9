"""LangGraph's runner for bench/peers.py: the graph of graph.py streamed with
``stream_mode="messages"`` (every token of the model node), without a checkpointer or, with
``--option checkpointer=sqlite``, with its SQLite one (``AsyncSqliteSaver``, a file in a
temporary directory, one thread per run).

Runs under bench/.venv-peers (bench/setup_peers.sh)::

    bench/.venv-peers/bin/python bench/peers/run_langgraph.py seq --base-url http://127.0.0.1:9100/v1
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import uuid
from typing import Any

import graph
import harness
from langchain_core.messages import AIMessageChunk


class LangGraph:
    def __init__(self) -> None:
        self.name = "langgraph"
        self.graph: Any = None
        self.stack = contextlib.AsyncExitStack()
        self.checkpointed = False

    async def start(self, args: argparse.Namespace) -> None:
        saver = None
        if args.options.get("checkpointer") == "sqlite":
            from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

            self.name = "langgraph+sqlite"
            self.checkpointed = True
            home = self.stack.enter_context(tempfile.TemporaryDirectory(prefix="lg-peers-"))
            saver = await self.stack.enter_async_context(
                AsyncSqliteSaver.from_conn_string(f"{home}/checkpoints.db")
            )
        self.graph = graph.build(args.base_url, saver)

    async def run_once(self, on_token: harness.OnToken) -> None:
        config: dict[str, Any] = {}
        if self.checkpointed:
            config = {"configurable": {"thread_id": uuid.uuid4().hex}}
        inputs = {"messages": [("user", "Call noop, then answer.")]}
        async for chunk, _meta in self.graph.astream(inputs, config, stream_mode="messages"):
            if isinstance(chunk, AIMessageChunk) and chunk.content:
                on_token(chunk.content)

    async def close(self) -> None:
        await self.stack.aclose()


if __name__ == "__main__":
    harness.main(LangGraph())
