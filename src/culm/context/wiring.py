"""How the engine sets up a session's context management (for a run, or ``engine.compact``):
its limits, the summarizer, the overflow patterns, and the session's compactions in the store."""

from __future__ import annotations

from culm.context.limits import limits_for
from culm.context.overflow import OverflowMatcher
from culm.domain.compaction import Compaction
from culm.domain.models import Session
from culm.loop.context import ContextSettings
from culm.providers.base import Model
from culm.providers.resolve import ModelResolver
from culm.settings import Settings
from culm.storage.base import Fence, SessionState, Store


def context_settings(
    settings: Settings,
    models: ModelResolver,
    store: Store,
    session: Session,
    model: Model,
    fence: Fence | None,
    *,
    loaded: SessionState | None = None,
) -> ContextSettings:
    """``fence``: the run's (owner, epoch), its compactions are fenced writes. None: a
    compaction outside a run, written only while no run holds the session's slot (the store
    checks it in the write itself, so a run starting meanwhile makes it ``SessionBusyError``).
    ``loaded``: what the run read as it started: its first ``load`` is that compaction, not
    another read (every later one reads the store)."""
    session_id = session.session_id
    summarizer = settings.compaction_model
    unread = [loaded.compaction] if loaded is not None else []

    async def load() -> Compaction | None:
        if unread:
            return unread.pop()
        return await store.get_compaction(session_id)

    return ContextSettings(
        limits=limits_for(settings, model.name, model.max_context_tokens, session.metadata),
        summarizer=models.resolve(summarizer) if summarizer else None,
        overflow=OverflowMatcher(settings.context_overflow_patterns),
        load=load,
        save=lambda compaction: store.add_compaction(compaction, fence=fence, idle=fence is None),
    )
