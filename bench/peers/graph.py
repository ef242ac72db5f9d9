"""The two-round tool task as a LangGraph graph: a model node (langchain-openai's ChatOpenAI,
streaming, at the fake upstream) and LangGraph's prebuilt ToolNode with the no-op tool.

bench/peers/run_langgraph.py builds it with or without a checkpointer; ``langgraph dev`` loads
``graph`` from here, at ``BENCH_UPSTREAM`` (the upstream, up to /v1): bench/peers/http_peers.py
writes its config, and by hand ``cd bench/peers && ../.venv-peers/bin/langgraph dev`` reads
bench/peers/langgraph.json.
"""

from __future__ import annotations

import os
from typing import Any

from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition


@tool
def noop() -> str:
    """Does nothing and returns 'ok'."""
    return "ok"


def build(base_url: str, checkpointer: Any = None) -> Any:
    model = ChatOpenAI(model="gpt-bench", base_url=base_url, api_key="bench", streaming=True)
    bound = model.bind_tools([noop])

    async def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await bound.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode([noop]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=checkpointer)


graph = build(os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:9100/v1"))
