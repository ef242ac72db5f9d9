"""Configuration: environment (``CULM_`` prefix), then ``$CULM_HOME/config.toml``, then defaults.

Provider credentials use the providers' own variable names (``OPENAI_API_KEY`` …).
"""

from __future__ import annotations

import os
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from culm.agents.models import AgentDefinition, check_agent_name
from culm.cost.prices import ModelPrice
from culm.mcp.config import SETTINGS_ORIGIN, ServerConfig, parse_servers


class RecoveryPolicy(StrEnum):
    """What a sweeper does with a run whose lease expired (its owner is gone): a database-wide
    behaviour, since every sweeper applies its own setting, so set it alike everywhere."""

    REQUEUE = "requeue"
    ERROR = "error"


class SandboxMode(StrEnum):
    """How the bash tool is confined (see culm.tools.sandbox)."""

    AUTO = "auto"
    BWRAP = "bwrap"
    NONE = "none"


# The event writer's linger when CULM_EVENT_FLUSH_INTERVAL is unset, per store backend
# (docs/benchmarks.md: "writer thread" for SQLite, the Redis bus's live delivery for PostgreSQL).
SQLITE_EVENT_FLUSH_INTERVAL = 0.1
POSTGRES_EVENT_FLUSH_INTERVAL = 0.0

Names = Annotated[list[str], NoDecode]
"""A list setting given in the environment as ``A,B,C`` (config.toml: an array)."""
Paths = Annotated[list[Path], NoDecode]


class ModelLimits(BaseModel):
    """A ``[models."provider:model"]`` table of config.toml: limits the catalog lacks or gets
    wrong (a local server's model, a fine-tune), and its price (a ``price`` sub-table, USD per
    million tokens: ``input``, ``output``, ``cache_read``, ``cache_write``, ``reasoning``) when the
    offline price table lacks it or gets it wrong."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_context_tokens: int | None = Field(default=None, ge=256)
    max_output_tokens: int | None = Field(default=None, ge=1)
    price: ModelPrice | None = None


class ShutdownPolicy(StrEnum):
    """What a clean stop does with runs still active after the grace period."""

    CANCEL = "cancel"
    RECOVER = "recover"


def default_home() -> Path:
    return Path(os.environ.get("CULM_HOME") or Path.home() / ".culm").expanduser()


def _alias(name: str) -> Any:
    return AliasChoices(f"CULM_{name}", name)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CULM_", extra="ignore", populate_by_name=True, validate_default=True
    )

    home: Path = Field(default_factory=default_home)
    database_url: str | None = None
    redis_url: str | None = None
    api_key: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8420, ge=1, le=65535)
    default_model: str = "scripted:demo"

    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=_alias("OPENAI_API_KEY")
    )
    openai_base_url: str = Field(
        default="https://api.openai.com/v1", validation_alias=_alias("OPENAI_BASE_URL")
    )
    anthropic_api_key: SecretStr | None = Field(
        default=None, validation_alias=_alias("ANTHROPIC_API_KEY")
    )
    anthropic_base_url: str = Field(
        default="https://api.anthropic.com", validation_alias=_alias("ANTHROPIC_BASE_URL")
    )

    # HTTP server
    sse_ping_seconds: float = Field(default=15.0, gt=0)
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024)
    shutdown_timeout: float = Field(default=10.0, gt=0)

    # Forward proxy (/openai/v1/…, /anthropic/v1/…)
    proxy_max_request_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    proxy_connect_timeout: float = Field(default=10.0, gt=0)
    # The longest wait for the upstream's next bytes (its first answer included).
    proxy_read_timeout: float = Field(default=600.0, gt=0)
    proxy_max_connections: int = Field(default=1000, ge=1)

    # Agent loop
    max_rounds: int = Field(default=50, ge=1)
    max_tool_calls_per_round: int = Field(default=32, ge=1)
    tool_timeout: float = Field(default=120.0, gt=0)
    model_max_attempts: int = Field(default=3, ge=1)
    model_retry_base_delay: float = Field(default=0.5, ge=0)
    model_retry_max_delay: float = Field(default=30.0, ge=0)
    model_connect_timeout: float = Field(default=10.0, gt=0)
    stream_idle_timeout: float = Field(default=120.0, gt=0)
    bash_output_limit: int = Field(default=64 * 1024, ge=1024)
    bash_sandbox: SandboxMode = SandboxMode.AUTO
    bash_network: bool = True
    # Variables of culm's environment that bash commands see besides PATH, HOME, LANG, TZ …
    bash_env_passthrough: Names = Field(default_factory=list)
    # Directories bash commands may read inside the sandbox, besides the system's.
    bash_read_only_paths: Paths = Field(default_factory=list)

    # What API clients may ask for (`culm run` is not limited): workspaces under these roots
    # (besides CULM_HOME/workspaces), and MCP servers of their own that run a command here.
    workspace_roots: Paths = Field(default_factory=list)
    allow_session_mcp_commands: bool = False

    # MCP tool servers: [mcp_servers.<name>] tables (see culm.mcp.config)
    mcp_servers: dict[str, ServerConfig] = Field(default_factory=dict)
    mcp_request_timeout: float = Field(default=30.0, gt=0)

    # Apps (culm.apps): `module:attr` of each app to load (CULM_APP=a:app,b:app), and whether the
    # installed packages' apps (entry point group `culm.apps`) are loaded too.
    app: Names = Field(default_factory=list)
    entry_point_apps: bool = True
    # Named agents: [agents.<name>] tables (see culm.agents.models.AgentDefinition)
    agents: dict[str, AgentDefinition] = Field(default_factory=dict)

    # Sub-agents (the spawn_agent tool)
    subagents_per_run: int = Field(default=4, ge=1)
    subagents_total: int = Field(default=16, ge=1)
    subagent_max_depth: int = Field(default=2, ge=1)
    subagent_idle_timeout: float = Field(default=15 * 60.0, gt=0)
    subagent_max_duration: float = Field(default=60 * 60.0, gt=0)
    subagent_heartbeat: float = Field(default=5.0, gt=0)

    # Context window (culm.context): a model's window and output reserve resolve from the
    # session's metadata, then `models` (config.toml [models."provider:model"]), then the shipped
    # catalog, then these defaults. Compaction starts when a request would pass the trigger
    # (window - output reserve - working reserve, or `context_trigger_percent` of the window) and
    # stops once it fits under `context_target_percent`.
    models: dict[str, ModelLimits] = Field(default_factory=dict)
    context_window: int = Field(default=128_000, ge=256)
    context_output_reserve: int = Field(default=8192, ge=1)
    context_working_reserve: int = Field(default=2048, ge=0)
    context_trigger_percent: float | None = Field(default=None, gt=0, le=100)
    context_target_percent: float = Field(default=50.0, gt=0, le=100)
    context_auto_compact: bool = True
    context_keep_rounds: int = Field(default=2, ge=0)
    context_keep_user_turns: int = Field(default=2, ge=0)
    context_elide_head_chars: int = Field(default=600, ge=0)
    context_elide_tail_chars: int = Field(default=300, ge=0)
    context_overflow_patterns: Names = Field(default_factory=list)
    compaction_model: str | None = None  # the summarizer (default: the session's model)

    # Schedules: this process runs the ticker (`culm run` does not); a fire later than the grace
    # is a misfire, settled by the schedule's misfire policy.
    scheduler: bool = True
    schedule_tick: float = Field(default=1.0, gt=0)
    schedule_misfire_grace: float = Field(default=60.0, ge=0)

    # Metrics: a bounded queue (emitting never blocks; overflow is dropped and counted), written
    # in batches of up to `metrics_batch_size` at least every `metrics_flush_interval` seconds.
    metrics_queue_size: int = Field(default=100_000, ge=1)
    metrics_batch_size: int = Field(default=5000, ge=1)
    metrics_flush_interval: float = Field(default=0.5, ge=0)
    metrics_retention_days: int = Field(default=90, ge=1)
    metrics_maintenance_interval: float = Field(default=60.0, gt=0)

    # Runtime and store
    # How long the event writer may wait to gather a bigger batch (0: write as soon as the
    # previous write is done): a streaming run's tokens then share a commit. Subscribers in
    # the process do not wait for it (events within a run's seq reservation are shown before
    # they are stored), so it is the durability window: a crash may lose this much of what
    # clients saw (a gap). Subscribers on other processes do wait for it (the bus carries
    # stored events only). Unset: 20 ms on SQLite (a single writer: coalescing pays), 0 on
    # PostgreSQL (concurrent commits are cheap; batches still form while a write is under
    # way): see `resolved_event_flush_interval`.
    event_flush_interval: float | None = Field(default=None, ge=0, le=1.0)
    event_batch_size: int = Field(default=1000, ge=1)
    # Flow control: a model streaming faster than its events are stored waits while more than
    # this many events (all runs together) await storage, until half of them are stored.
    event_backlog_limit: int = Field(default=2000, ge=2)
    subscriber_queue_size: int = Field(default=1000, ge=1)
    recovery_policy: RecoveryPolicy = RecoveryPolicy.ERROR
    max_attempts: int = Field(default=3, ge=1)
    # Leases, in the database's time: every `heartbeat_seconds` a process renews the leases of
    # the runs it executes by `lease_seconds`; a run whose lease runs out is taken over.
    lease_seconds: float = Field(default=10.0, gt=0)
    heartbeat_seconds: float = Field(default=2.0, gt=0)
    # How many runs one worker (or embedded server) executes at once, and how often it looks
    # for ready runs when no wake-up came (a lost notification).
    worker_concurrency: int = Field(default=64, ge=1)
    # Connections the model client keeps (open at once, and idle for reuse) to each provider;
    # unset: max(100, worker_concurrency), so every run this process executes can be on the wire.
    model_max_connections: int | None = Field(default=None, ge=1)
    claim_poll_seconds: float = Field(default=2.0, gt=0)
    shutdown_policy: ShutdownPolicy = ShutdownPolicy.CANCEL
    shutdown_grace: float = Field(default=0.0, ge=0)
    # Event bus (Redis, when `redis_url` is set): keys start with `redis_prefix`; a run's stream
    # keeps about `bus_stream_maxlen` events (MAXLEN ~) and expires `bus_stream_ttl_seconds`
    # after the run ends. Publishing waits in a queue of `bus_publish_queue_size` batches
    # (overflow is dropped and counted: subscribers read it back from the store).
    redis_prefix: str = Field(default="culm:", min_length=1)
    bus_stream_maxlen: int = Field(default=10_000, ge=100)
    bus_stream_ttl_seconds: int = Field(default=3600, ge=1)
    bus_publish_queue_size: int = Field(default=10_000, ge=1)
    # How long the store may keep failing (disk full, database gone) before the runs whose
    # events it cannot take end in error (code storage_unavailable).
    storage_retry_window: float = Field(default=30.0, gt=0)

    @field_validator("mcp_servers", mode="before")
    @classmethod
    def _parse_mcp_servers(cls, value: Any) -> dict[str, ServerConfig]:
        return parse_servers(value, SETTINGS_ORIGIN)  # a ConfigError naming server and field

    @field_validator("agents", mode="after")
    @classmethod
    def _agent_names(cls, value: dict[str, AgentDefinition]) -> dict[str, AgentDefinition]:
        for name in value:
            check_agent_name(name)
        return value

    @field_validator(
        "bash_env_passthrough",
        "bash_read_only_paths",
        "workspace_roots",
        "context_overflow_patterns",
        "app",
        mode="before",
    )
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=default_home() / "config.toml")
        return (init_settings, env_settings, toml)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.home / 'culm.db'}"

    @property
    def resolved_event_flush_interval(self) -> float:
        if self.event_flush_interval is not None:
            return self.event_flush_interval
        if self.resolved_database_url.startswith("sqlite"):
            return SQLITE_EVENT_FLUSH_INTERVAL
        return POSTGRES_EVENT_FLUSH_INTERVAL

    @property
    def resolved_model_max_connections(self) -> int:
        if self.model_max_connections is not None:
            return self.model_max_connections
        return max(100, self.worker_concurrency)

    @property
    def price_overrides(self) -> dict[str, ModelPrice]:
        return {name: m.price for name, m in self.models.items() if m.price is not None}

    @property
    def workspaces_dir(self) -> Path:
        return self.home / "workspaces"

    @property
    def allowed_workspace_roots(self) -> list[Path]:
        """Where API clients' workspaces may be: CULM_HOME/workspaces and CULM_WORKSPACE_ROOTS."""
        roots = [self.workspaces_dir, *self.workspace_roots]
        return [Path(root).expanduser().resolve() for root in roots]

    @property
    def config_file(self) -> Path:
        return default_home() / "config.toml"

    @property
    def scripts_dir(self) -> Path:
        return self.home / "scripts"


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, ``config.toml`` and ``overrides``; a bad value is a
    :class:`~culm.errors.ConfigError` naming the variable, not a validation traceback."""
    from culm.errors import ConfigError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "?"
        variable = f"CULM_{name.upper()}" if name.islower() else name
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"invalid setting {variable}: {first['msg']}{more}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid {default_home() / 'config.toml'}: {exc}") from exc
