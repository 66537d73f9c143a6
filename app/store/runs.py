"""Queries on runs, their events and traces. Every read is scoped to an owner."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, insert, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from app.runner.events import RunEvent
from app.runner.state import Checkpoint
from app.store.feedback import FeedbackRecord, history
from app.store.models import LLMCall, Run, ToolCallRow
from app.store.models import RunEvent as RunEventRow
from app.store.tool_sets import restore_tools

runs = cast(Table, Run.__table__)
events_t = cast(Table, RunEventRow.__table__)
llm_calls_t = cast(Table, LLMCall.__table__)
tool_calls_t = cast(Table, ToolCallRow.__table__)


@dataclass(frozen=True, kw_only=True)
class Owner:
    """Whose rows a query may see; admins see all."""

    user_id: str
    is_admin: bool = False


ANYONE = Owner(user_id="", is_admin=True)
"""For the service's own reads (workers, the reaper), not for a caller."""


@dataclass(frozen=True, kw_only=True)
class NewRun:
    id: uuid.UUID
    user_id: str
    agent: str
    agent_version: str
    model: str
    pattern: str
    status: str
    input: str
    metadata: dict[str, object]
    max_turns: int
    timeout_s: float
    created_at: datetime
    started_at: datetime | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    attempt: int = 0
    webhook_url: str | None = None
    session_id: uuid.UUID | None = None
    history_len: int = 0
    """Conversation messages inherited from the session (see services/sessions.py)."""
    model_tier: str | None = None
    """The tier the agent's model policy chose (app/agents/routing.py); None: no policy."""
    model_reason: str | None = None
    experiment: str | None = None
    variant: str | None = None
    shadow_of: uuid.UUID | None = None
    """Set on a shadow run: the live run it copies (see services/rollouts.py)."""
    shadow_version: str | None = None
    """Set on a live run sampled for shadowing: the version its shadow will run."""
    priority: int = 0
    """Higher is claimed first; shadow runs wait behind live ones."""


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """A run as stored."""

    id: uuid.UUID
    user_id: str
    agent: str
    agent_version: str
    model: str
    pattern: str
    status: str
    input: str
    metadata: dict[str, object]
    max_turns: int
    timeout_s: float
    result: dict[str, object] | None
    error: dict[str, object] | None
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: float
    llm_calls: int
    tool_calls: int
    turns: int
    checkpoint: dict[str, object] | None
    lease_owner: str | None
    attempt: int
    crashes: int
    event_seq: int
    cancel_requested: bool
    webhook_url: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    session_id: uuid.UUID | None
    history_len: int
    model_tier: str | None
    model_reason: str | None
    experiment: str | None = None
    variant: str | None = None
    shadow_of: uuid.UUID | None = None
    shadow_version: str | None = None
    feedback: dict[str, object] | None = None

    def usage(self) -> dict[str, int | float]:
        """The usage totals, as the Run answer and the end events show them."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens,
            "cost_usd": self.cost_usd,
            "llm_calls": self.llm_calls,
            "tool_calls": self.tool_calls,
        }


TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})

# Statements built once: building them per call costs more CPU than running them.
INSERT_RUN = insert(runs)
INSERT_EVENTS = insert(events_t)


def event_rows(events: Sequence[RunEvent]) -> list[dict[str, object]]:
    return [
        {"run_id": uuid.UUID(e.run_id), "seq": e.seq, "type": e.type.value, "data": e.data}
        for e in events
    ]


async def insert_events(conn: AsyncConnection, events: Sequence[RunEvent]) -> None:
    rows = event_rows(events)
    if len(rows) == 1:
        await conn.execute(INSERT_EVENTS, rows[0])
    elif rows:
        await conn.execute(INSERT_EVENTS, rows)


def run_values(run: NewRun, checkpoint: Checkpoint | None) -> dict[str, object]:
    """Every column of a new run."""
    return {
        "id": run.id,
        "user_id": run.user_id,
        "agent": run.agent,
        "agent_version": run.agent_version,
        "model": run.model,
        "pattern": run.pattern,
        "status": run.status,
        "priority": run.priority,
        "input": run.input,
        "metadata": run.metadata,
        "max_turns": run.max_turns,
        "timeout_s": run.timeout_s,
        "result": None,
        "error": None,
        "input_tokens": 0,
        "output_tokens": 0,
        "cached_tokens": 0,
        "cost_usd": 0.0,
        "llm_calls": 0,
        "tool_calls": 0,
        "turns": 0,
        "checkpoint": checkpoint.model_dump(mode="json") if checkpoint else None,
        "lease_owner": run.lease_owner,
        "lease_expires_at": run.lease_expires_at,
        "attempt": run.attempt,
        "crashes": 0,
        "event_seq": checkpoint.next_seq if checkpoint else 0,
        "cancel_requested": False,
        "webhook_url": run.webhook_url,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": None,
        "session_id": run.session_id,
        "history_len": run.history_len,
        "model_tier": run.model_tier,
        "model_reason": run.model_reason,
        "experiment": run.experiment,
        "variant": run.variant,
        "shadow_of": run.shadow_of,
        "shadow_version": run.shadow_version,
        "feedback": None,
    }


async def insert_run(
    conn: AsyncConnection,
    run: NewRun,
    *,
    checkpoint: Checkpoint | None = None,
    events: Sequence[RunEvent] = (),
) -> None:
    """Insert a run with its first checkpoint and events."""
    await conn.execute(INSERT_RUN, run_values(run, checkpoint))
    await insert_events(conn, events)


async def get_run(
    conn: AsyncConnection, run_id: uuid.UUID, owner: Owner, *, lock: bool = False
) -> RunRecord | None:
    """The run if it exists and `owner` may see it; otherwise None (never tell which).
    `lock`: held for this transaction (PostgreSQL; SQLite locks the whole file anyway)."""
    stmt = select(runs).where(runs.c.id == run_id)
    if not owner.is_admin:
        # A shadow run is the operator's: its user never learns it exists.
        stmt = stmt.where(runs.c.user_id == owner.user_id, runs.c.shadow_of.is_(None))
    if lock:
        stmt = stmt.with_for_update()
    row = (await conn.execute(stmt)).mappings().first()
    return None if row is None else record_from_row(row)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFilter:
    """Which runs a listing shows; every field given must match."""

    user_id: str | None = None
    """Admins only: one user's runs (others always see only their own)."""
    status: str | None = None
    agent: str | None = None
    session_id: uuid.UUID | None = None
    before: tuple[datetime, uuid.UUID] | None = None
    """Only runs older than this (created_at, id): the page after one that ended there."""


async def list_runs(
    conn: AsyncConnection, owner: Owner, where: RunFilter, *, limit: int
) -> list[RunRecord]:
    """Runs `owner` may see, newest first (shadow runs never: they are the operator's)."""
    stmt = select(runs).where(runs.c.shadow_of.is_(None))
    user_id = where.user_id if owner.is_admin else owner.user_id
    if user_id is not None:
        stmt = stmt.where(runs.c.user_id == user_id)
    if where.status is not None:
        stmt = stmt.where(runs.c.status == where.status)
    if where.agent is not None:
        stmt = stmt.where(runs.c.agent == where.agent)
    if where.session_id is not None:
        stmt = stmt.where(runs.c.session_id == where.session_id)
    if where.before is not None:
        stmt = stmt.where(tuple_(runs.c.created_at, runs.c.id) < tuple_(*where.before))
    stmt = stmt.order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit)
    return [record_from_row(row) for row in (await conn.execute(stmt)).mappings()]


def record_from_row(row: Mapping[Any, Any]) -> RunRecord:
    """A RunRecord from a full `runs` row (a select or a RETURNING of every column; the
    row's values are as untyped as the driver makes them)."""
    fields = {k: row[k] for k in RunRecord.__dataclass_fields__ if k in row}
    fields["metadata"] = row["metadata"]
    return RunRecord(**fields)


@dataclass(frozen=True, kw_only=True)
class Trace:
    llm_calls: list[dict[str, object]]
    tool_calls: list[dict[str, object]]
    feedback: list[FeedbackRecord] = field(default_factory=list)
    """The owner's ratings of the run, oldest first (the last one is current)."""


async def get_trace(conn: AsyncConnection, run_id: uuid.UUID) -> Trace:
    """Every LLM call and tool call of a run, in order, and its ratings. Check ownership first."""
    llm = await conn.execute(
        select(llm_calls_t).where(llm_calls_t.c.run_id == run_id).order_by(llm_calls_t.c.id)
    )
    tools = await conn.execute(
        select(tool_calls_t).where(tool_calls_t.c.run_id == run_id).order_by(tool_calls_t.c.id)
    )
    calls = [dict(r) for r in llm.mappings()]
    await restore_tools(conn, [c["request"] for c in calls if isinstance(c["request"], dict)])
    return Trace(
        llm_calls=calls,
        tool_calls=[dict(r) for r in tools.mappings()],
        feedback=await history(conn, run_id),
    )


async def tool_results(
    conn: AsyncConnection, run_id: uuid.UUID
) -> list[tuple[str, dict[str, object], str, str | None]]:
    """A run's tool calls as (name, arguments, status, result), in order."""
    rows = await conn.execute(
        select(
            tool_calls_t.c.name,
            tool_calls_t.c.arguments,
            tool_calls_t.c.status,
            tool_calls_t.c.result,
        )
        .where(tool_calls_t.c.run_id == run_id)
        .order_by(tool_calls_t.c.id)
    )
    return [(r.name, r.arguments, r.status, r.result) for r in rows]
