"""Queries on sessions and the runs that are their messages. Reads are scoped to an owner.

A session's runs are ordered by `history_len`, which grows with every message (each run
inherits at least the user messages before it): the order needs no clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store.models import AgentSession
from app.store.runs import TERMINAL_STATUSES, Owner, RunRecord, record_from_row, runs

sessions_t = cast(Table, AgentSession.__table__)
_SESSION_RUN = select(
    runs.c.id,
    runs.c.status,
    runs.c.error,
    runs.c.history_len,
    runs.c.created_at,
    runs.c.finished_at,
)


@dataclass(frozen=True, kw_only=True)
class SessionRecord:
    """A session as stored."""

    id: uuid.UUID
    user_id: str
    agent: str
    metadata: dict[str, object]
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class SessionRun:
    """A run of a session as its log shows it (the checkpoint is read separately)."""

    id: uuid.UUID
    status: str
    error: dict[str, object] | None
    history_len: int
    created_at: datetime
    finished_at: datetime | None


async def insert_session(conn: AsyncConnection, session: SessionRecord) -> None:
    await conn.execute(
        insert(sessions_t).values(
            id=session.id,
            user_id=session.user_id,
            agent=session.agent,
            metadata=session.metadata,
            created_at=session.created_at,
        )
    )


async def get_session(
    conn: AsyncConnection, session_id: uuid.UUID, owner: Owner, *, lock: bool = False
) -> SessionRecord | None:
    """The session if it exists and `owner` may see it; otherwise None (never tell which).
    `lock`: held for this transaction (PostgreSQL; SQLite's transactions take the write
    lock when they begin, so they are serialized anyway)."""
    stmt = select(sessions_t).where(sessions_t.c.id == session_id)
    if not owner.is_admin:
        stmt = stmt.where(sessions_t.c.user_id == owner.user_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await conn.execute(stmt)).mappings().first()
    if row is None:
        return None
    return SessionRecord(
        id=row["id"],
        user_id=row["user_id"],
        agent=row["agent"],
        metadata=row["metadata"],
        created_at=row["created_at"],
    )


async def active_run(conn: AsyncConnection, session_id: uuid.UUID) -> SessionRun | None:
    """A run of the session that has not ended (at most one, unless rows were edited)."""
    stmt = _SESSION_RUN.where(
        runs.c.session_id == session_id, runs.c.status.not_in(TERMINAL_STATUSES)
    ).limit(1)
    row = (await conn.execute(stmt)).mappings().first()
    return None if row is None else SessionRun(**row)


async def latest_run(conn: AsyncConnection, session_id: uuid.UUID) -> RunRecord | None:
    """The session's last message, with its checkpoint."""
    stmt = (
        select(runs)
        .where(runs.c.session_id == session_id)
        .order_by(runs.c.history_len.desc(), runs.c.created_at.desc())
        .limit(1)
    )
    row = (await conn.execute(stmt)).mappings().first()
    return None if row is None else record_from_row(row)


async def list_runs(conn: AsyncConnection, session_id: uuid.UUID) -> list[SessionRun]:
    """The session's runs in message order, without their checkpoints."""
    stmt = _SESSION_RUN.where(runs.c.session_id == session_id).order_by(
        runs.c.history_len, runs.c.created_at
    )
    return [SessionRun(**row) for row in (await conn.execute(stmt)).mappings()]


async def session_cost(conn: AsyncConnection, session_id: uuid.UUID) -> float:
    """What the session's runs have cost so far, in USD."""
    total = func.coalesce(func.sum(runs.c.cost_usd), 0.0)
    stmt = select(total).where(runs.c.session_id == session_id)
    return float((await conn.execute(stmt)).scalar_one())


async def get_checkpoints(
    conn: AsyncConnection, run_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, dict[str, object] | None]:
    """The checkpoints of these runs, by id."""
    if not run_ids:
        return {}
    stmt = select(runs.c.id, runs.c.checkpoint).where(runs.c.id.in_(run_ids))
    return {row.id: row.checkpoint for row in await conn.execute(stmt)}


async def delete_session(conn: AsyncConnection, session_id: uuid.UUID) -> None:
    """The session and its runs; their events, trace rows, approvals and webhook
    deliveries go with them (ON DELETE CASCADE)."""
    await conn.execute(delete(runs).where(runs.c.session_id == session_id))
    await conn.execute(delete(sessions_t).where(sessions_t.c.id == session_id))
