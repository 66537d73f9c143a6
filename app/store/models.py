"""Tables. Runs, their events, checkpoints and traces; sessions; users and API keys.

One schema for PostgreSQL and SQLite: JSON becomes JSONB on PostgreSQL, times
are stored in UTC and always come back timezone-aware.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JsonType = JSON().with_variant(JSONB(), "postgresql")
# SQLite has no BIGINT autoincrement; INTEGER PRIMARY KEY is its rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is stored in UTC and read back timezone-aware, on every database."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=UTC)


def json_text(column: object, key: str) -> ColumnElement[str | None]:
    """`column ->> key` on PostgreSQL, `json_extract(column, '$.key')` on SQLite."""
    return cast(ColumnElement[str | None], column[key].as_string())  # type: ignore[index]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Run(Base):
    """A run is a row (this) and a stream of events (RunEvent)."""

    __tablename__ = "runs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128))
    agent: Mapped[str] = mapped_column(String(128))
    agent_version: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    pattern: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(24))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    input: Mapped[str] = mapped_column(Text)
    metadata_: Mapped[dict[str, object]] = mapped_column("metadata", JsonType, default=dict)
    max_turns: Mapped[int] = mapped_column(Integer)
    timeout_s: Mapped[float] = mapped_column(Float)
    result: Mapped[dict[str, object] | None] = mapped_column(JsonType)
    error: Mapped[dict[str, object] | None] = mapped_column(JsonType)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    llm_calls: Mapped[int] = mapped_column(Integer, default=0)
    tool_calls: Mapped[int] = mapped_column(Integer, default=0)
    turns: Mapped[int] = mapped_column(Integer, default=0)
    checkpoint: Mapped[dict[str, object] | None] = mapped_column(JsonType)
    """Messages, usage, turn and next event sequence after the last committed step."""
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    """Fencing token: +1 on every claim; writes check (lease_owner, attempt)."""
    crashes: Mapped[int] = mapped_column(Integer, default=0)
    """Times a worker lost the run by dying (its lease expired)."""
    event_seq: Mapped[int] = mapped_column(Integer, default=0)
    """Sequence number of the run's next event."""
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    session_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    """The session this run is a message of (deleted with it; no foreign key)."""
    history_len: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    """Conversation messages (system message not counted) inherited from the session."""
    model_tier: Mapped[str | None] = mapped_column(String(16))
    """simple | medium | complex when the agent's model policy chose `model`."""
    model_reason: Mapped[str | None] = mapped_column(Text)
    """Why the classifier chose that tier."""
    experiment: Mapped[str | None] = mapped_column(String(128))
    """The A/B experiment whose variant served this run (app/agents/policy.py)."""
    variant: Mapped[str | None] = mapped_column(String(64))
    shadow_of: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    """Set on a shadow run: the live run whose request it copied (no foreign key: a shadow
    outlives nothing, it is just never shown to the user)."""
    shadow_version: Mapped[str | None] = mapped_column(String(64))
    """Set on a live run sampled for shadowing, until its shadow run is queued."""
    feedback: Mapped[dict[str, object] | None] = mapped_column(JsonType)
    """The owner's current rating (app/store/feedback.py keeps every one)."""

    __table_args__ = (
        Index("ix_runs_user_created", "user_id", "created_at"),
        Index("ix_runs_session_created", "session_id", "created_at"),
        Index("ix_runs_agent_created", "agent", "created_at"),
        Index("ix_runs_shadow_of", "shadow_of"),
        Index(
            "ix_runs_shadow_due",
            "finished_at",
            postgresql_where=text("shadow_version IS NOT NULL"),
            sqlite_where=text("shadow_version IS NOT NULL"),
        ),
        Index(
            "ix_runs_retention",
            "finished_at",
            postgresql_where=text("session_id IS NULL AND finished_at IS NOT NULL"),
            sqlite_where=text("session_id IS NULL AND finished_at IS NOT NULL"),
        ),
        # Narrow partial indexes keep claims and lease sweeps cheap as the table grows.
        Index(
            "ix_runs_claim",
            text("priority DESC"),
            "created_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        Index(
            "ix_runs_lease",
            "lease_expires_at",
            postgresql_where=text("status = 'running'"),
            sqlite_where=text("status = 'running'"),
        ),
    )


class AgentSession(Base):
    """A conversation with one agent: each message is a run that continues its history."""

    __tablename__ = "sessions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), index=True)
    agent: Mapped[str] = mapped_column(String(128))
    metadata_: Mapped[dict[str, object]] = mapped_column("metadata", JsonType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RunEvent(Base):
    __tablename__ = "run_events"

    run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, object]] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LLMCall(Base):
    __tablename__ = "llm_calls"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    turn: Mapped[int] = mapped_column(Integer)
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    request: Mapped[dict[str, object]] = mapped_column(JsonType)
    response: Mapped[dict[str, object] | None] = mapped_column(JsonType)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    priced: Mapped[bool] = mapped_column(Boolean, default=True)
    latency_ms: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    cache_hit: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ToolCallRow(Base):
    __tablename__ = "tool_calls"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    """`run:turn:index`: the same when a call is re-run after a crash."""
    turn: Mapped[int] = mapped_column(Integer)
    call_index: Mapped[int] = mapped_column(Integer)
    call_id: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(128))
    arguments: Mapped[dict[str, object]] = mapped_column(JsonType)
    status: Mapped[str] = mapped_column(String(16))
    """started, ok, refused, invalid, error, in_doubt."""
    result: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Approval(Base):
    """A high-risk tool call waiting for (or decided by) a human. Single use."""

    __tablename__ = "approvals"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(String(128))
    """Owner of the run."""
    tool_call_key: Mapped[str] = mapped_column(String(128), unique=True)
    call_id: Mapped[str] = mapped_column(String(128))
    tool: Mapped[str] = mapped_column(String(128))
    arguments: Mapped[dict[str, object]] = mapped_column(JsonType)
    status: Mapped[str] = mapped_column(String(16))
    """pending, approved, denied, expired, cancelled."""
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decided_by: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    approved_arguments: Mapped[dict[str, object] | None] = mapped_column(JsonType)

    __table_args__ = (
        Index(
            "ix_approvals_pending",
            "expires_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )


class WebhookDelivery(Base):
    """Outbox: written in the same transaction as the state change it announces."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    """Sent as `webhook-id`, the same on every retry."""
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    event_type: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    """Rendered with the state change it announces; every retry sends the same bytes."""
    status: Mapped[str] = mapped_column(String(16))
    """pending, delivered, failed."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )


class BudgetOverride(Base):
    """A user's own token budget per window, instead of AGENTSVC_DEFAULT_TOKEN_BUDGET."""

    __tablename__ = "budget_overrides"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    """Any user, also one with only a static key (so no foreign key to users)."""
    tokens_per_window: Mapped[int | None] = mapped_column(BigInteger)
    """None: unlimited; 0: no LLM call."""
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128))
    """Who set it: an admin's user id, or `cli`."""


class ToolSet(Base):
    """The tools an LLM call offered, stored once: `llm_calls.request` names them by digest."""

    __tablename__ = "tool_sets"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    """sha256 of the tools' JSON with sorted keys."""
    tools: Mapped[list[object]] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TrafficPolicy(Base):
    """How an agent's traffic is split between its versions (app/agents/policy.py)."""

    __tablename__ = "traffic_policies"

    agent: Mapped[str] = mapped_column(String(128), primary_key=True)
    policy: Mapped[dict[str, object]] = mapped_column(JsonType)
    revision: Mapped[int] = mapped_column(Integer)
    """+1 on every change: an automatic rollback applies only to the revision it judged."""
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128))
    """An admin's user id, `cli`, or `rollback`."""


class RunFeedback(Base):
    """A thumbs up or down on a run by its owner; the latest one is `current`."""

    __tablename__ = "run_feedback"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(String(128))
    rating: Mapped[str] = mapped_column(String(8))
    """up | down."""
    comment: Mapped[str | None] = mapped_column(Text)
    """As written; shown to others only through the output filter."""
    tags: Mapped[list[str]] = mapped_column(JsonType, default=list)
    current: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class IdempotencyKey(Base):
    """A submission's `Idempotency-Key`: the same key from the same user names one run, for
    as long as the run exists."""

    __tablename__ = "idempotency_keys"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    request_digest: Mapped[str] = mapped_column(String(64))
    """sha256 of the request body as parsed: a key reused for another request is refused."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
