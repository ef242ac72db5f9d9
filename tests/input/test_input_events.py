"""The ``input_requested`` event a parked run stores and publishes (``culm.runtime.waiting``):
what a client following the run sees of the request, besides the request rows themselves."""

from __future__ import annotations

from pathlib import Path

from culm.domain.events import RunEvent
from tests.input.support import call, engine, of_type, until_waiting


async def test_an_approval_request_event_carries_the_calls_arguments(tmp_path: Path) -> None:
    async with engine(tmp_path) as eng:
        published: list[RunEvent] = []
        eng.registry.observers.append(published.extend)
        eng.scripts.register(
            "writer", {"turns": [[call("write_file", path="out.txt", content="hello")]]}
        )
        (tmp_path / "ws").mkdir()
        run = await eng.run(
            "write it",
            model="scripted:writer",
            tools=["write_file"],
            workspace=str(tmp_path / "ws"),
            require_approval=["write_*"],
        )
        [request] = await until_waiting(eng, run.run_id)
        [stored] = of_type(await eng.store.read_events(run.run_id), "input_requested")
        await eng.cancel(run.run_id)
    assert (stored.kind, stored.tool_name, stored.request_id) == (
        "approval",
        "write_file",
        request.request_id,
    )
    assert stored.arguments == {"path": "out.txt", "content": "hello"}
    assert (stored.question, stored.choices) == (None, None)
    assert of_type(published, "input_requested") == [stored]  # to the bus and the metrics too


async def test_a_question_event_carries_the_question_and_its_choices(tmp_path: Path) -> None:
    async with engine(tmp_path) as eng:
        ask = call("ask_user", question="Which colour?", choices=["red", "blue"])
        eng.scripts.register("asker", {"turns": [[ask], [{"echo": True}]]})
        run = await eng.run("pick", model="scripted:asker", tools=["ask_user"])
        await until_waiting(eng, run.run_id)
        [stored] = of_type(await eng.store.read_events(run.run_id), "input_requested")
        await eng.cancel(run.run_id)
    assert (stored.kind, stored.tool_name) == ("question", "ask_user")
    assert (stored.question, stored.choices) == ("Which colour?", ["red", "blue"])
