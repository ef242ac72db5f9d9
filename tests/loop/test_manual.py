"""Compacting a session outside a run (``loop/manual.py``): the whole transcript as far as it
goes, with the session's tools in the measure, and only the summarizer's rounds reported
(found by mutation testing, issue #22)."""

from __future__ import annotations

from pathlib import Path

from culm.context.budget import ContextLimits
from culm.domain.events import RoundCompleted
from culm.domain.models import Session
from culm.loop.context import ContextSettings
from culm.loop.manual import compact_session
from tests.loop.harness import SUMMARY_USAGE, SavedCompactions, Summarizer, transcript
from tests.support import RecordingTool

LIMITS = ContextLimits(window=1000, output_reserve=100, working_reserve=100)


async def test_a_session_is_compacted_as_far_as_it_goes_and_its_rounds_reported(
    tmp_path: Path,
) -> None:
    session = Session(session_id="s", model="test:agent", workspace=str(tmp_path))
    model = Summarizer("the summary", name="test:agent")
    saved = SavedCompactions()
    reported: list[RoundCompleted] = []
    settings = ContextSettings(limits=LIMITS, load=saved.load, save=saved.save)
    messages = transcript(4, "x" * 400)  # below the trigger: compacted because asked

    done = await compact_session(session, model, [], settings, messages, reported.append)

    assert saved.saved == [done]
    assert (done.session_id, done.run_id, done.trigger) == ("s", None, "manual")
    assert (done.summary, done.summary_model, done.messages_compacted) == (
        "the summary",
        "test:agent",
        5,
    )
    assert done.summary_usage == SUMMARY_USAGE
    assert [(r.model, r.compaction, r.usage) for r in reported] == [
        ("test:agent", True, SUMMARY_USAGE)
    ]
    assert len(model.requests) == 1

    # The session's tools are part of every request, so of the measure too.
    tools = [RecordingTool()]
    with_tools = await compact_session(
        session, Summarizer("s"), tools, settings, messages, reported.append
    )
    assert with_tools.tokens_before > done.tokens_before
