"""Asking a person from the command line (people in the loop, ``culm.input``).

``culm run`` answers its run's requests (and its sub-agents') as they come: on a terminal it
asks (``Allow bash "rm -rf build"? [y]es / [n]o / [e]dit``), with ``--yes`` it approves every
call, and without a terminal and without ``--yes`` it denies, saying so. ``culm input RUN_ID``
answers a waiting run's requests from another shell, through a server.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from culm.cli.client import DEFAULT_SERVER, Json, ServerOption
from culm.cli.render import format_arguments, stderr_console
from culm.cli.sessions import call
from culm.domain.events import RunEvent, innermost
from culm.errors import InputConflictError, UserError

if TYPE_CHECKING:
    from culm.client.aio import Client

NO_TERMINAL = (
    "culm run has no terminal to ask on (run it with --yes to approve every call, or answer "
    "from another shell with `culm input RUN_ID` against a `culm serve`)"
)
Answer = dict[str, Any]  # the keyword arguments of Engine.respond (the POST body, less its id)
ReadLine = Callable[[str], Awaitable[str | None]]  # prompt -> the line typed (None: no more)


def asked(event: RunEvent) -> tuple[str, Json] | None:
    """(run id, request) when ``event`` is an ``input_requested``, of the run or of a
    sub-agent (inside ``sub_agent_event``: answered on the child's run id)."""
    if event.type == "input_requested":
        return event.run_id, event.model_dump(mode="json")
    if event.type == "sub_agent_event":
        run_id, inner = innermost(event)  # of a child, or of a grandchild (and so on)
        if inner.get("type") == "input_requested":
            return run_id, inner
    return None


def question_text(request: Json) -> str:
    if request["kind"] == "question":
        choices = request.get("choices") or []
        shown = f" ({' / '.join(choices)})" if choices else ""
        return f"{request['question']}{shown} "
    shown = _shown_arguments(request.get("arguments"))
    return f"Allow {request['tool_name']} {shown}? [y]es / [n]o / [e]dit "


def _shown_arguments(arguments: Any) -> str:
    """The call's arguments, short: a lone string value quoted, else JSON."""
    if isinstance(arguments, dict) and len(arguments) == 1:
        [value] = arguments.values()
        if isinstance(value, str):
            return json.dumps(value, ensure_ascii=False)
    return format_arguments(arguments)


async def decide(request: Json, read_line: ReadLine) -> Answer | None:
    """Ask through ``read_line``; None when the input ended first."""
    if request["kind"] == "question":
        line = await read_line(question_text(request))
        return None if line is None else {"answer": line.strip()}
    while True:
        line = await read_line(question_text(request))
        if line is None:
            return None
        choice = line.strip().lower()
        if choice in ("y", "yes"):
            return {"approve": True}
        if choice in ("n", "no"):
            reason = await read_line("Reason (optional): ")
            return {"approve": False, "reason": (reason or "").strip() or None}
        if choice in ("e", "edit"):
            edited = await _edited(request, read_line)
            if edited is not None:
                return {"approve": True, "arguments": edited}


async def _edited(request: Json, read_line: ReadLine) -> dict[str, Any] | None:
    current = json.dumps(request.get("arguments"), ensure_ascii=False)
    line = await read_line(f"Arguments as JSON (now {current}): ")
    try:
        value = json.loads(line or "")
    except json.JSONDecodeError as exc:
        stderr_console().print(Text(f"not JSON ({exc}); asking again", style="yellow"))
        return None
    if not isinstance(value, dict):
        stderr_console().print(Text("arguments are a JSON object; asking again", style="yellow"))
        return None
    return value


def terminal_reader(console: Console) -> ReadLine:
    """Prompts on ``console`` and reads stdin's lines without blocking the event loop (and so
    without a thread a Ctrl-C could not stop)."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    buffer = bytearray()

    async def read_line(prompt: str) -> str | None:
        console.print(Text(prompt, style="bold"), end="")
        while b"\n" not in buffer:
            ready: asyncio.Future[bytes] = loop.create_future()

            def readable(future: asyncio.Future[bytes] = ready) -> None:
                if not future.done():
                    future.set_result(os.read(fd, 4096))

            loop.add_reader(fd, readable)
            try:
                chunk = await ready
            finally:
                loop.remove_reader(fd)
            if not chunk:
                return None
            buffer.extend(chunk)
        line, _, rest = bytes(buffer).partition(b"\n")
        buffer[:] = rest
        return line.decode(errors="replace")

    return read_line


class Asker:
    """``culm run``'s side: answers each request its run's stream shows."""

    def __init__(
        self, respond: Callable[..., Awaitable[object]], *, yes: bool, console: Console
    ) -> None:
        self._respond = respond
        self._yes = yes
        self._console = console
        self._read_line = terminal_reader(console) if sys.stdin.isatty() else None
        self._prompting: asyncio.Future[Answer] | None = None

    def stop(self) -> None:
        """Stop asking (the run is being cancelled): a question on screen is left unanswered."""
        if self._prompting is not None:
            self._prompting.cancel()

    async def on_event(self, event: RunEvent) -> None:
        found = asked(event)
        if found is None:
            return
        run_id, request = found
        self._prompting = asyncio.ensure_future(self._answer(request))
        try:
            answer = await self._prompting
        except asyncio.CancelledError:
            if self._prompting.cancelled() and not _cancelling():
                return  # stop(): the run is being cancelled, nobody is asked any more
            raise
        finally:
            self._prompting = None
        try:
            await self._respond(run_id, request["request_id"], **answer)
        except InputConflictError:
            self._notice("(answered elsewhere meanwhile)")

    async def _answer(self, request: Json) -> Answer:
        if self._yes and request["kind"] == "approval":
            self._notice(f"approved {request['tool_name']} (--yes)")
            return {"approve": True}
        if self._read_line is not None:
            answer = await decide(request, self._read_line)
            if answer is not None:
                return answer
        self._notice(f"denied {request['tool_name']}: {NO_TERMINAL}")
        return {"approve": False, "reason": NO_TERMINAL}

    def _notice(self, text: str) -> None:
        self._console.print(Text(text, style="yellow"))


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


# culm input


def input_command(
    run_id: Annotated[str, typer.Argument(help="The waiting run's id.", show_default=False)],
    approve: Annotated[
        bool, typer.Option("--approve", help="Approve every open approval request.")
    ] = False,
    deny: Annotated[bool, typer.Option("--deny", help="Deny every open request.")] = False,
    answer: Annotated[
        str | None, typer.Option("--answer", help="Answer every open question with this.")
    ] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (with --deny).")] = None,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """Answer a waiting run's input requests (and its sub-agents'): on a terminal, one by one;
    otherwise with --approve, --deny or --answer."""
    given = _given(approve=approve, deny=deny, answer=answer, reason=reason)
    if given is None and not sys.stdin.isatty():
        raise UserError("no terminal to ask on: give --approve, --deny or --answer")

    async def answer_all(client: Client) -> int:
        requests = await client.pending_input(run_id)
        if not requests:
            typer.echo(f"run {run_id} has no open input requests")
        read_line = terminal_reader(stderr_console()) if given is None else None
        for request in requests:
            chosen = given(request) if given is not None else None
            if read_line is not None:
                chosen = await decide(request, read_line)
            if chosen is None:
                continue  # --answer for approvals, --approve for questions: left open
            done = await client.answer(request["run_id"], request["request_id"], **chosen)
            typer.echo(f"{done['request_id']}  {done['tool_name']}  {_outcome(done)}")
        return len(requests)

    call(server, answer_all)


def _given(
    *, approve: bool, deny: bool, answer: str | None, reason: str | None
) -> Callable[[Json], Answer | None] | None:
    if sum((approve, deny, answer is not None)) > 1:
        raise UserError("give one of --approve, --deny and --answer")
    if approve:
        return lambda request: {"approve": True} if request["kind"] == "approval" else None
    if deny:
        return lambda request: {"approve": False, "reason": reason}
    if answer is not None:
        return lambda request: {"answer": answer} if request["kind"] == "question" else None
    return None


def _outcome(request: Json) -> str:
    given = request.get("answer") or {}
    if given.get("answer") is not None:
        return f"answered: {given['answer']}"
    return "approved" if given.get("approve") else "denied"
