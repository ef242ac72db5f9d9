"""The help desk's app: two typed tools, two agents and a schedule.

culm serve --app helpdesk.app:app          # from examples/helpdesk
"""

from __future__ import annotations

import os
from datetime import date
from typing import Literal

from pydantic import BaseModel

import culm

app = culm.App()

# Any provider:model; the shipped script lets you try it without an API key.
MODEL = os.environ.get("HELPDESK_MODEL", "scripted:helpdesk")


class Order(BaseModel):
    order_id: str
    item: str
    status: Literal["processing", "shipped", "delivered"]
    total: float
    ordered_on: date


ORDERS = {
    "A-1001": Order(
        order_id="A-1001",
        item="kettle",
        status="shipped",
        total=39.9,
        ordered_on=date(2026, 11, 28),
    ),
    "A-1002": Order(
        order_id="A-1002",
        item="toaster",
        status="delivered",
        total=24.5,
        ordered_on=date(2026, 11, 20),
    ),
}


@app.tool(read_only=True)
def lookup_order(order_id: str) -> Order:
    """Look an order up by its id.

    Args:
        order_id: the order's id, like A-1001.
    """
    order = ORDERS.get(order_id.upper())
    if order is None:
        raise culm.ToolFailure(f"no order {order_id!r}")  # the model sees this as the result
    return order


@app.tool(timeout=10)
async def open_ticket(
    order_id: str,
    topic: Literal["late", "damaged", "refund", "other"],
    summary: str,
    ctx: culm.ToolContext,
    urgent: bool = False,
) -> str:
    """Open a ticket for the team, written to the session's workspace.

    Args:
        order_id: the order the ticket is about.
        topic: what kind of problem it is.
        summary: one or two sentences for the team.
        urgent: whether someone should look today.
    """
    tickets = ctx.workspace / "tickets.txt"
    line = f"{order_id}\t{topic}\t{'URGENT' if urgent else 'normal'}\t{summary}\n"
    with tickets.open("a", encoding="utf-8") as out:
        out.write(line)
    ctx.emit_output(line)
    return f"ticket opened for {order_id} ({topic})"


app.agent(
    "support",
    description="Answers customers about their orders and opens tickets.",
    model=MODEL,
    system_prompt="You are a help desk agent. Look orders up before answering; open a ticket "
    "when the customer needs the team.",
    tools=["lookup_order", "open_ticket"],
    max_rounds=8,
)
app.agent(
    "triage",
    description="Reads the day's tickets and sums them up (read-only).",
    model=MODEL,
    system_prompt="Sum up the open tickets in the workspace for the morning meeting.",
    tools=["lookup_order", "read"],
    max_rounds=4,
)
app.schedule(
    "morning triage",
    cron="0 8 * * 1-5",
    timezone="Europe/Paris",
    agent="triage",
    message="Sum up yesterday's tickets.",
)
