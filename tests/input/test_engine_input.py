"""People in the loop through the Engine: approvals, denials, edits, questions, conflicts,
cancel and timeouts, on both backends."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

import culm
from culm.domain.events import RunEvent
from culm.domain.input import InputAnswer
from culm.errors import InputConflictError, InvalidFieldError, NotFoundError
from culm.storage.sql import SqlStore
from tests.input.support import call, engine, of_type, until_waiting
from tests.support import collect, settings


def _write_then_answer(path: str = "out.txt") -> dict[str, object]:
    return {
        "turns": [
            [call("write_file", path=path, content="hello"), call("read_file", path="in.txt")],
            [{"text": "done"}],
        ]
    }


async def _start(eng: culm.Engine, tmp_path: Path, **session: object) -> culm.Run:
    workspace = tmp_path / "ws"
    workspace.mkdir(exist_ok=True)
    (workspace / "in.txt").write_text("input")
    eng.scripts.register("writer", _write_then_answer())
    return await eng.run(
        "write it",
        model="scripted:writer",
        tools=["write_file", "read_file"],
        workspace=str(workspace),
        require_approval=["write_*"],
        **session,
    )


async def test_an_approved_call_runs_after_the_wait_and_the_run_goes_on(tmp_path: Path) -> None:
    async with engine(tmp_path) as eng:
        run = await _start(eng, tmp_path)
        [request] = await until_waiting(eng, run.run_id)
        assert (request.kind, request.tool_name) == ("approval", "write_file")
        assert request.arguments == {"path": "out.txt", "content": "hello"}
        assert not (tmp_path / "ws" / "out.txt").exists()  # nothing ran yet
        assert eng.registry.get(run.run_id) is None  # a waiting run holds no runner
        answered = await eng.respond(run.run_id, request.request_id, approve=True)
        assert answered.status == "answered"
        done = await eng.wait(run.run_id, timeout=20)
        assert done.status is culm.RunStatus.COMPLETED
        assert (tmp_path / "ws" / "out.txt").read_text() == "hello"
        events = await collect(eng.subscribe(run.run_id))
        assert [e.seq for e in events] == list(range(1, len(events) + 1))  # one gapless run
        assert len(of_type(events, "execution_started")) == 1
        kinds = [e.type for e in events if e.type.startswith(("input_", "tool_"))]
        # The read ran at once; the write waited for its approval.
        assert kinds == [
            "tool_start",
            "tool_complete",
            "input_requested",
            "input_received",
            "tool_start",
            "tool_complete",
        ]
        assert of_type(events, "tool_start")[1].tool_name == "write_file"
        assert done.usage.total_tokens > 0 and done.round_count == 2


async def test_a_denial_goes_back_to_the_model_with_its_reason(tmp_path: Path) -> None:
    async with engine(tmp_path) as eng:
        run = await _start(eng, tmp_path)
        [request] = await until_waiting(eng, run.run_id)
        await eng.respond(run.run_id, request.request_id, approve=False, reason="not today")
        done = await eng.wait(run.run_id, timeout=20)
        assert done.status is culm.RunStatus.COMPLETED
        assert not (tmp_path / "ws" / "out.txt").exists()
        messages = await eng.get_messages(run.session_id)
        [denied] = [m for m in messages if m.role == "tool" and m.tool_name == "write_file"]
        assert denied.is_error and denied.content == "error: denied by the user: not today"
        events = await collect(eng.subscribe(run.run_id))
        [error] = of_type(events, "tool_error")
        assert error.error == "denied by the user: not today"


async def test_edited_arguments_are_the_ones_that_run(tmp_path: Path) -> None:
    async with engine(tmp_path) as eng:
        run = await _start(eng, tmp_path)
        [request] = await until_waiting(eng, run.run_id)
        edited = {"path": "safe.txt", "content": "edited"}
        await eng.respond(run.run_id, request.request_id, approve=True, arguments=edited)
        assert (await eng.wait(run.run_id, timeout=20)).status is culm.RunStatus.COMPLETED
        assert (tmp_path / "ws" / "safe.txt").read_text() == "edited"
        assert not (tmp_path / "ws" / "out.txt").exists()
        messages = await eng.get_messages(run.session_id)
        [result] = [m for m in messages if m.role == "tool" and m.tool_name == "write_file"]
        assert "edited the arguments" in result.content


async def test_a_question_is_answered_and_the_answer_is_the_tools_result(tmp_path: Path) -> None:
    async with engine(tmp_path) as eng:
        ask = call("ask_user", question="Which colour?", choices=["red", "blue"])
        eng.scripts.register("asker", {"turns": [[ask], [{"echo": True}]]})
        run = await eng.run("pick", model="scripted:asker", tools=["ask_user"])
        [request] = await until_waiting(eng, run.run_id)
        assert (request.kind, request.question, request.choices) == (
            "question",
            "Which colour?",
            ["red", "blue"],
        )
        with pytest.raises(InvalidFieldError):
            await eng.respond(run.run_id, request.request_id, approve=True)
        await eng.respond(run.run_id, request.request_id, answer="blue")
        assert (await eng.wait(run.run_id, timeout=20)).status is culm.RunStatus.COMPLETED
        messages = await eng.get_messages(run.session_id)
        [result] = [m for m in messages if m.role == "tool"]
        assert (result.tool_name, result.content, result.is_error) == ("ask_user", "blue", False)


async def test_two_concurrent_answers_one_wins_the_other_gets_the_first(tmp_path: Path) -> None:
    async with engine(tmp_path) as eng:
        run = await _start(eng, tmp_path)
        [request] = await until_waiting(eng, run.run_id)
        outcomes = await asyncio.gather(
            eng.respond(run.run_id, request.request_id, approve=True),
            eng.respond(run.run_id, request.request_id, approve=False, reason="no"),
            return_exceptions=True,
        )
        won = [o for o in outcomes if isinstance(o, culm.InputRequest)]
        lost = [o for o in outcomes if isinstance(o, InputConflictError)]
        assert len(won) == 1 and len(lost) == 1, outcomes
        assert lost[0].request.answer == won[0].answer  # the 409 carries the first answer
        again = await eng.respond(run.run_id, request.request_id, **_as_kwargs(won[0]))
        assert again.answer == won[0].answer  # the same answer again: idempotent
        done = await eng.wait(run.run_id, timeout=20)
        events = await collect(eng.subscribe(run.run_id))
        assert len(of_type(events, "input_received")) == 1
        assert done.status is culm.RunStatus.COMPLETED
        with pytest.raises(InputConflictError):  # stale: the run is no longer waiting
            await eng.respond(run.run_id, request.request_id, approve=not won[0].answer.approve)
        with pytest.raises(NotFoundError):
            await eng.respond(run.run_id, "no-such-request", approve=True)


def _as_kwargs(request: culm.InputRequest) -> dict[str, object]:
    assert request.answer is not None
    return {"approve": request.answer.approve, "reason": request.answer.reason}


async def test_cancel_of_a_waiting_run_is_immediate(tmp_path: Path) -> None:
    async with engine(tmp_path) as eng:
        run = await _start(eng, tmp_path)
        [request] = await until_waiting(eng, run.run_id)
        cancelled = await eng.cancel(run.run_id, reason="changed my mind")
        assert cancelled.status is culm.RunStatus.CANCELLED  # at once: nobody holds it
        assert await eng.pending_input(run.run_id) == []
        with pytest.raises(InputConflictError):
            await eng.respond(run.run_id, request.request_id, approve=True)
        events = await collect(eng.subscribe(run.run_id))
        assert events[-1].type == "cancelled"
        # The session is free again.
        eng.scripts.register("after", {"turns": [[{"text": "ok"}]]})
        again = await eng.start_run(run.session_id, "again", model="scripted:after")
        assert (await eng.wait(again.run_id, timeout=20)).status is culm.RunStatus.COMPLETED


async def test_a_waiting_run_holds_its_session(tmp_path: Path) -> None:
    async with engine(tmp_path) as eng:
        run = await _start(eng, tmp_path)
        await until_waiting(eng, run.run_id)
        with pytest.raises(culm.AlreadyRunningError):
            await eng.start_run(run.session_id, "more")
        waiting = await eng.list_runs(status="waiting")
        assert [r.run_id for r in waiting] == [run.run_id]


async def test_a_timeout_denies_by_default(tmp_path: Path) -> None:
    async with engine(tmp_path) as eng:
        published: list[RunEvent] = []  # what the metrics and the bus are given
        eng.registry.observers.append(published.extend)
        run = await _start(eng, tmp_path, input_timeout=0.2)
        await until_waiting(eng, run.run_id)
        done = await eng.wait(run.run_id, timeout=20)
        assert done.status is culm.RunStatus.COMPLETED
        [timed_out] = [e for e in of_type(published, "input_received") if e.run_id == run.run_id]
        assert timed_out.timed_out  # the sweeper's event reached them too
        events = await collect(eng.subscribe(run.run_id))
        [received] = of_type(events, "input_received")
        assert received.timed_out and received.approve is False
        assert not (tmp_path / "ws" / "out.txt").exists()
        assert ("write_file", "timed_out", 1) in await eng.inputs.counts()


async def test_a_timeout_ends_the_run_in_error_when_the_session_says_so(tmp_path: Path) -> None:
    async with engine(tmp_path) as eng:
        run = await _start(eng, tmp_path, input_timeout=0.2, input_timeout_action="error")
        await until_waiting(eng, run.run_id)
        done = await eng.wait(run.run_id, timeout=20)
        assert done.status is culm.RunStatus.ERROR
        events = await collect(eng.subscribe(run.run_id))
        assert events[-1].type == "error" and events[-1].code == "input_timeout"


async def test_a_run_waits_until_every_request_of_its_round_is_answered(tmp_path: Path) -> None:
    async with engine(tmp_path) as eng:
        first = call("write_file", path="a.txt", content="a")
        second = call("ask_user", question="Go on?")
        eng.scripts.register("two", {"turns": [[first, second], [{"text": "done"}]]})
        run = await eng.run(
            "two",
            model="scripted:two",
            tools=["write_file", "ask_user"],
            workspace=str(tmp_path),
            require_approval=["write_file"],
        )
        approval, question = await until_waiting(eng, run.run_id, count=2)
        assert (approval.kind, question.kind) == ("approval", "question")
        await eng.respond(run.run_id, approval.request_id, approve=True)
        still = await eng.get_run(run.run_id)
        assert still.status is culm.RunStatus.WAITING  # one request is still open
        assert [r.request_id for r in await eng.pending_input(run.run_id)] == [question.request_id]
        await eng.respond(run.run_id, question.request_id, approve=False)  # declined
        assert (await eng.wait(run.run_id, timeout=20)).status is culm.RunStatus.COMPLETED
        assert (tmp_path / "a.txt").read_text() == "a"
        results = [m for m in await eng.get_messages(run.session_id) if m.role == "tool"]
        assert [(m.tool_name, m.is_error) for m in results] == [
            ("write_file", False),
            ("ask_user", True),
        ]
        counts = await eng.inputs.counts()
        assert sorted(counts) == [("ask_user", "declined", 1), ("write_file", "approved", 1)]


async def test_an_approved_call_is_not_run_again_after_a_crash_while_resuming(
    tmp_path: Path,
) -> None:
    async with engine(tmp_path) as eng:
        run = await _start(eng, tmp_path)
        [request] = await until_waiting(eng, run.run_id)
    # Answered while no engine runs; then a worker claims it and dies before storing the
    # call's result (its lease runs out at once).
    store = SqlStore(culm.Settings(home=tmp_path).resolved_database_url)
    await store.start()
    try:
        await store.answer_input(run.run_id, request.request_id, InputAnswer(approve=True))
        [claimed] = await store.claim_runs(
            "ghost:1:x", limit=1, lease_seconds=0.01, only=[run.run_id]
        )
        assert claimed.attempt == 1
    finally:
        await store.aclose()
    (tmp_path / "scripts").mkdir(exist_ok=True)  # the next engine knows the model from its file
    (tmp_path / "scripts" / "writer.json").write_text(json.dumps(_write_then_answer()))
    async with engine(tmp_path, recovery_policy="requeue") as eng:
        done = await eng.wait(run.run_id, timeout=20)
        assert done.status is culm.RunStatus.COMPLETED and done.attempt == 2, done.error
        assert not (tmp_path / "ws" / "out.txt").exists()  # maybe ran before: not run again
        messages = await eng.get_messages(run.session_id)
        [result] = [m for m in messages if m.role == "tool" and m.tool_name == "write_file"]
        assert result.is_error and "not run again" in result.content
        [applied] = await eng.store.list_input([run.run_id], statuses=None)
        assert applied.status == "applied"
        assert done.round_count == 2  # the rounds go on


class _HeldParkStore(SqlStore):
    """The real store, but parking waits until the test lets it go (the runner finalizing)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.parking = asyncio.Event()
        self.go_on = asyncio.Event()

    async def park_run(self, run_id: str, **kwargs: Any) -> culm.RunStatus:
        self.parking.set()
        await self.go_on.wait()
        return await super().park_run(run_id, **kwargs)


async def test_a_cancel_while_the_run_parks_waits_for_it_then_ends_it(tmp_path: Path) -> None:
    url = culm.Settings(home=tmp_path).resolved_database_url
    store = _HeldParkStore(url)
    async with culm.Engine(settings(tmp_path, heartbeat_seconds=0.1), store=store) as eng:
        run = await _start(eng, tmp_path)
        async with asyncio.timeout(20):
            await store.parking.wait()  # its runner is finalizing: parking, not yet parked
        cancelling = asyncio.ensure_future(eng.cancel(run.run_id, reason="no"))
        await asyncio.sleep(0)  # the cancel finds the runner finalizing and waits for it
        assert not cancelling.done()
        store.go_on.set()
        cancelled = await asyncio.wait_for(cancelling, 20)
        assert cancelled.status is culm.RunStatus.CANCELLED  # parked, then ended by the store
        events = await collect(eng.subscribe(run.run_id))
        assert [e.type for e in events][-2:] == ["input_requested", "cancelled"]
        [closed] = await eng.store.list_input([run.run_id], statuses=None)
        assert closed.status == "closed"
