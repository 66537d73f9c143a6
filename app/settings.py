"""The one settings class. Values come from `AGENTSVC_*` environment variables and `.env`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Role = Literal["user", "approver", "admin"]
ROLES: tuple[Role, ...] = ("user", "approver", "admin")
DEFAULT_SECRET = "dev-insecure-change-me"


class Settings(BaseSettings):
    """Every setting of the service; `.env.example` documents each one."""

    # An empty value (`AGENTSVC_REDIS_URL=`, a line of .env.example uncommented) is unset.
    model_config = SettingsConfigDict(
        env_prefix="AGENTSVC_", env_file=".env", extra="ignore", frozen=True, env_ignore_empty=True
    )

    database_url: str = "sqlite+aiosqlite:///./agentsvc.db"
    db_pool_size: int = Field(default=10, ge=1, le=200)
    api_keys: Annotated[tuple[tuple[str, str, Role], ...], NoDecode] = ()
    """`user:key[:role],…` parsed into (user, key, role)."""
    secret_key: SecretStr = SecretStr(DEFAULT_SECRET)
    """Keys the hash of stored API keys. Change it in every real deployment."""

    default_model: str = "local/local-1"
    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: SecretStr | None = None
    anthropic_base_url: str = "https://api.anthropic.com"
    anthropic_api_key: SecretStr | None = None
    llm_timeout_s: float = Field(default=60.0, gt=0)
    """One attempt of one LLM call (each retry and each fallback link has its own)."""
    llm_retry_attempts: int = Field(default=3, ge=1)
    """Attempts per LLM call and model, the first included (1: no retry)."""
    llm_retry_max_s: float = Field(default=30.0, ge=0)
    """No LLM retry starts once the time since the first attempt plus its wait reaches this."""
    retry_wait_initial_s: float = Field(default=0.5, ge=0)
    """Retry n waits a random time up to this × 2^(n-1) (full jitter), or `Retry-After`."""
    retry_wait_max_s: float = Field(default=10.0, ge=0)
    """Longest wait before one retry; a longer `Retry-After` ends the retries at once."""
    tool_retry_attempts: int = Field(default=2, ge=1)
    """Attempts of an idempotent tool call that raised ToolUnavailable, within its timeout."""
    breaker_failure_threshold: int = Field(default=5, ge=1)
    """Failures of a model or tool within `breaker_window_s` that open its circuit breaker."""
    breaker_window_s: float = Field(default=60.0, gt=0)
    """The sliding window, in seconds, in which a breaker counts failures."""
    breaker_cooldown_s: float = Field(default=30.0, ge=0)
    """An open breaker refuses calls this long after its last failure, then lets a probe
    through (0: at once)."""
    breaker_half_open_probes: int = Field(default=1, ge=1)
    """Calls a half-open breaker lets through at once; the first result closes or reopens it."""
    breaker_trust_closed_s: float = Field(default=1.0, ge=0, le=60)
    """With Redis: a process takes a breaker's *closed* answer as good for this long instead
    of asking Redis before every call (failures still reach Redis at once). A breaker another
    replica opened goes unseen by this process for at most this long; 0: ask every time."""

    agents_module: str | None = None
    sandbox_dir: Path = Path("./sandbox")
    http_tool_allowed_hosts: Annotated[frozenset[str], NoDecode] = frozenset()

    lease_seconds: float = Field(default=30.0, gt=0)
    """How long a run stays with a worker that stopped renewing its lease."""
    max_attempts: int = Field(default=3, ge=1)
    """Workers a run may lose (crash) before it ends failed/interrupted."""
    embedded_workers: int = Field(default=1, ge=0)
    """Queue workers `serve` runs in-process (0 where dedicated workers run)."""
    worker_concurrency: int = Field(default=16, ge=1, le=1000)
    """Runs one worker drives at once."""
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    """Idle workers look for work this often even without a wake-up."""
    approval_ttl_s: float = Field(default=3600.0, gt=0)
    retention_days: float | None = Field(default=None, ge=1)
    """Runs finished (and sessions idle) longer ago than this are deleted; None: kept."""
    policy_refresh_s: float = Field(default=2.0, gt=0, le=300)
    """Each process reads the agents' traffic policies again this often: a change made on
    one replica applies on every other within this time."""
    allow_self_approval: bool = False

    webhook_secret: SecretStr | None = None
    """`whsec_…` (Standard Webhooks); required to accept `webhook_url`."""
    webhook_allowed_hosts: Annotated[frozenset[str], NoDecode] = frozenset()
    """Hosts exempt from the private-address refusal (e.g. 127.0.0.1 in tests)."""
    webhook_retry_schedule: str = "5,300,1800,7200,18000,36000,36000"
    """Seconds between delivery attempts; one attempt more than delays."""
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=60)

    redis_url: str | None = None
    """Redis for what replicas share: live event bus, budgets, prompt cache, breakers, rate
    limits; None: this process's own stand-ins."""
    redis_timeout_s: float = Field(default=0.1, gt=0, le=10)
    """Connect and socket timeout of every Redis call except the live subscription."""
    prompt_cache_ttl_s: float = Field(default=3600.0, ge=0)
    """Seconds a deterministic LLM answer stays in the prompt cache; 0 turns it off."""

    stream_ping_s: float = Field(default=15.0, gt=0, le=300)
    """An SSE comment ping this often keeps proxies from closing idle streams."""
    stream_send_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """A client that does not take an event within this long is cut off."""
    stream_max_s: float = Field(default=3600.0, gt=0)
    """A stream ends after this long; EventSource reconnects with Last-Event-ID."""
    stream_token_ttl_s: float = Field(default=600.0, gt=0, le=86400)
    """How long the token in a Run's `stream_url` grants reading that run's stream."""
    stream_retention_s: float = Field(default=3600.0, gt=0)
    """How long the live bus keeps a run's events after it ends (the database keeps them all)."""
    stream_poll_s: float = Field(default=1.0, gt=0, le=60)
    """Backstop: streams check the database this often for events the live bus missed."""

    sync_timeout_s: float = Field(default=30.0, ge=0)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    default_token_budget: int | None = Field(default=None, ge=0)
    """Tokens (input + output) each user may use per budget window; None: unlimited (usage is
    still counted), 0: none. `PUT /agent/admin/budgets/{user}` overrides it per user."""
    budget_window_s: int = Field(default=86400, ge=60)
    """Length of a budget window in seconds, aligned on the Unix epoch (daily: 00:00 UTC)."""
    budget_fail_policy: Literal["closed", "open"] = "closed"
    """When Redis does not answer: `closed` refuses LLM calls and new requests of users with
    a budget; `open` lets them through uncounted."""
    max_run_tokens: int | None = Field(default=None, ge=0)
    """Tokens one run may use; None: no cap. Agent versions may set a lower cap."""
    max_run_cost_usd: float | None = Field(default=None, ge=0)
    """USD one run may cost; None: no cap. Agent versions may set a lower cap."""
    rate_limit_per_minute: int | None = Field(default=None, ge=0)
    """Requests per minute per API key (at most that many at once, refilled continuously);
    None: no limit, 0: every request refused."""

    web_processes: int = Field(default=1, ge=1, le=64)
    """API processes `serve` starts (each with its own embedded workers)."""
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["text", "json"] = "text"
    """`json`: one JSON object per line (ts, level, logger, message, run_id, exc), uvicorn's too."""

    metrics_dir: Path | None = None
    """Directory where this host's `agentsvc serve` and `agentsvc worker` processes share
    their metrics, so /metrics of any of them counts all; empty it before the first process
    starts. None: each process its own (`serve --processes N` then uses a temporary one)."""
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    """`agentsvc worker` serves /metrics on this port (at AGENTSVC_HOST); None: it does not."""

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        entries: list[tuple[str, str, str]] = []
        for raw in value.split(","):
            if not raw.strip():
                continue
            parts = raw.strip().split(":")
            if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
                raise ValueError(f"API key entry {raw.strip()!r} is not user:key[:role]")
            role = parts[2] if len(parts) == 3 else "user"
            if role not in ROLES:
                raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
            entries.append((parts[0], parts[1], role))
        return tuple(entries)

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("http_tool_allowed_hosts", "webhook_allowed_hosts", mode="before")
    @classmethod
    def _parse_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(h.strip().lower() for h in value.split(",") if h.strip())
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from app.jobs.webhook_delivery import decode_secret

            decode_secret(value.get_secret_value())
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
