"""How a session's context management is set up from the settings (``context/wiring.py``):
the summarizer is the configured compaction model, the overflow patterns take the setting's,
and the window is the model's own (found by mutation testing, issue #22)."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from culm.context.wiring import context_settings
from culm.domain.compaction import Compaction
from culm.domain.models import Session
from culm.errors import LeaseLostError, ModelRequestError
from culm.providers.resolve import ModelResolver
from culm.providers.scripted import Script, ScriptedModel, ScriptLibrary
from culm.settings import Settings
from culm.storage.sql import SqlStore

SESSION = Session(session_id="s", model="scripted:small", workspace="/w")
SMALL = ScriptedModel("scripted:small", Script(turns=[[]], max_context_tokens=5000))


async def test_the_summarizer_patterns_and_window_come_from_the_settings_and_model(
    tmp_path: Path,
) -> None:
    settings = Settings(
        home=tmp_path,
        compaction_model="scripted:echo",
        context_overflow_patterns=["the tank is full"],
    )
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'culm.db'}")  # never started: not used
    async with httpx2.AsyncClient() as client:
        models = ModelResolver(settings, client, ScriptLibrary())
        wired = context_settings(settings, models, store, SESSION, SMALL, None)
        plain = context_settings(Settings(home=tmp_path), models, store, SESSION, SMALL, None)
    assert wired.summarizer is not None and wired.summarizer.name == "scripted:echo"
    assert plain.summarizer is None  # the session's own model summarizes
    refused = ModelRequestError("server error (HTTP 400): the tank is full", status=400)
    assert wired.overflow.is_overflow(refused)
    assert not plain.overflow.is_overflow(refused)
    assert wired.limits.window == 5000


async def test_a_runs_compactions_are_fenced_writes(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'culm.db'}")
    await store.start()
    try:
        await store.create_session(SESSION)
        async with httpx2.AsyncClient() as client:
            models = ModelResolver(settings, client, ScriptLibrary())
            ctx = context_settings(settings, models, store, SESSION, SMALL, ("w1", 1))
        compaction = Compaction(
            session_id="s",
            run_id="no-such-run",  # a run this process no longer holds
            trigger="auto",
            strategy="elide",
            message_count=0,
            tokens_before=0,
            tokens_after=0,
        )
        with pytest.raises(LeaseLostError):
            await ctx.save(compaction)
        assert await ctx.load() is None
    finally:
        await store.aclose()
