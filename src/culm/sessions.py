"""The sessions part of culm's Python API (:class:`~culm.services.Engine` inherits it): create,
check, read and delete sessions, their transcripts and compactions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from culm.agents.models import session_settings
from culm.context.view import model_view
from culm.domain.compaction import Compaction
from culm.domain.models import Message, Session, SessionKind
from culm.domain.time import new_id
from culm.errors import NotFoundError, SessionBusyError
from culm.loop.manual import compact_session
from culm.mcp.manager import session_metadata
from culm.metrics.derive import session_compaction_round
from culm.tools.paths import session_workspace

if TYPE_CHECKING:
    from culm.agents.registry import Agents
    from culm.loop.context import ContextSettings
    from culm.mcp.manager import MCPManager
    from culm.metrics.pipeline import MetricsPipeline
    from culm.providers.base import Model
    from culm.providers.resolve import ModelResolver
    from culm.settings import Settings
    from culm.storage.base import Fence, Store
    from culm.tools import ToolRegistry


class SessionsAPI:
    """Sessions, on the engine's store, agents, tools and models (set by the engine)."""

    settings: Settings
    agents: Agents
    tools: ToolRegistry
    mcp: MCPManager
    metrics: MetricsPipeline
    store: Store
    models: ModelResolver

    if TYPE_CHECKING:

        def _require_open(self) -> None: ...

        def _context_settings(
            self, session: Session, model: Model, fence: Fence | None
        ) -> ContextSettings: ...

    async def create_session(
        self,
        *,
        agent: str | None = None,
        kind: SessionKind = SessionKind.ROOT,
        parent_session_id: str | None = None,
        **settings: Any,
    ) -> Session:
        """Create a session from ``settings`` (:class:`~culm.agents.models.SessionSettings`:
        ``model``, ``system_prompt``, ``tools``, ``workspace``, ``metadata``, ``mcp_servers``
        (the session's own MCP servers, kept in its metadata), ``max_rounds``,
        ``tool_timeout``, people in the loop's ``require_approval``, ``input_timeout`` and
        ``input_timeout_action``, and ``max_cost_usd`` and ``max_tokens``, which limit the
        spend of each of its runs (culm.loop.spend)), over those of the named ``agent``. The
        model and tool names are checked now, so mistakes surface here."""
        session = await self._new_session(
            agent=agent, kind=kind, parent_session_id=parent_session_id, **settings
        )
        await self.store.create_session(session)
        return session

    async def _new_session(
        self,
        *,
        agent: str | None = None,
        kind: SessionKind = SessionKind.ROOT,
        parent_session_id: str | None = None,
        **settings: Any,
    ) -> Session:
        """:meth:`create_session`'s session, not yet stored."""
        self._require_open()
        fields = await self.agents.session_fields(agent, session_settings(settings).given())
        tools, workspace = fields.pop("tools", ()), fields.pop("workspace", None)
        metadata = session_metadata(fields.pop("metadata", None), fields.pop("mcp_servers", None))
        session_id = new_id()
        draft = self._draft(  # the other settings are the session's fields of the same name
            session_id,
            model=fields.pop("model", None),
            metadata=metadata,
            kind=kind,
            parent_session_id=parent_session_id,
            agent=agent,
            **fields,
        )
        tool_names = self.tools.expand(tools, draft)  # MCP names: against its servers
        workspace_path = str(self._workspace(session_id, workspace))
        return draft.model_copy(update={"tools": tool_names, "workspace": workspace_path})

    async def check_agent(self, name: str | None) -> None:
        """Raise InvalidFieldError (``agent``) unless ``name`` is None or a known agent."""
        await self.agents.session_fields(name, {})

    def check_session(
        self,
        *,
        model: str | None = None,
        tools: Sequence[str] = (),
        workspace: str | Path | None = None,
        mcp_servers: dict[str, Any] | None = None,
    ) -> None:
        """Raise what :meth:`create_session` would raise for these settings, creating nothing."""
        self._require_open()
        draft = self._draft("", model=model, metadata=session_metadata(None, mcp_servers))
        self.tools.expand(tools, draft)
        if workspace is not None:
            self._workspace("", workspace)

    def _draft(self, session_id: str, *, model: str | None, **fields: Any) -> Session:
        """A session not yet stored, its model resolved (or the error raised)."""
        model_name = model or self.settings.default_model
        self.models.resolve(model_name)
        return Session(session_id=session_id, model=model_name, workspace="", **fields)

    def _workspace(self, session_id: str, workspace: str | Path | None) -> Path:
        return session_workspace(self.settings.workspaces_dir / session_id, workspace)

    async def get_session(self, session_id: str) -> Session:
        self._require_open()
        session = await self.store.get_session(session_id)
        if session is None:
            raise NotFoundError("session", session_id)
        return session

    async def list_sessions(self, *, limit: int = 100) -> list[Session]:
        self._require_open()
        return await self.store.list_sessions(limit=limit)

    async def delete_session(self, session_id: str) -> None:
        self._require_open()
        if not await self.store.delete_session(session_id):
            raise NotFoundError("session", session_id)
        await self.mcp.forget_session(session_id)

    async def get_messages(self, session_id: str, *, view: str = "stored") -> list[Message]:
        """The session's transcript as stored (every original message), or with
        ``view="model"`` as the model is sent it (after the session's latest compaction)."""
        await self.get_session(session_id)
        messages = await self.store.get_messages(session_id)
        if view == "model":
            return model_view(messages, await self.store.get_compaction(session_id))
        return messages

    async def compact(self, session_id: str) -> Compaction:
        """Compact the session's context now (``trigger: manual``): what can be, is (old tool
        outputs elided, the conversation before the last rounds summarized by the session's
        model or ``CULM_COMPACTION_MODEL``). ``SessionBusyError`` while a run is active: the
        run compacts its own context."""
        session = await self.get_session(session_id)
        active = await self.store.get_active_run(session_id)
        if active is not None:  # early, before a summarizer call for nothing (the write rechecks)
            raise SessionBusyError(session_id, active.run_id)
        model = self.models.resolve(session.model)
        return await compact_session(
            session,
            model,
            self.tools.resolve(session.tools),
            self._context_settings(session, model, None),
            await self.store.get_messages(session_id),
            lambda event: self.metrics.emit(session_compaction_round(session_id, event)),
        )

    async def list_compactions(self, session_id: str) -> list[Compaction]:
        await self.get_session(session_id)
        return await self.store.list_compactions(session_id)
