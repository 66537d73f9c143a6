"""Deleting what is older than the retention period (AGENTSVC_RETENTION_DAYS).

A run outside any session goes once it finished before the cutoff. A session is a
conversation whose history is its runs, so it is kept whole while in use and goes whole,
runs included, once nothing happened in it since the cutoff (created before it, no run
started after it, none still going). Events, trace rows, approvals, webhook deliveries,
ratings and idempotency keys go with their run (ON DELETE CASCADE). Each call deletes at
most `limit` of each, the rows chosen with SKIP LOCKED on PostgreSQL, so that workers
sweeping at once neither wait for nor repeat each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store.runs import TERMINAL_STATUSES, runs
from app.store.sessions import sessions_t


@dataclass(frozen=True, slots=True)
class Swept:
    runs: int
    """Runs outside sessions deleted."""
    sessions: int
    """Idle sessions deleted, with their runs."""


async def delete_expired(conn: AsyncConnection, *, cutoff: datetime, limit: int) -> Swept:
    """Delete up to `limit` finished runs outside sessions, and up to `limit` idle sessions,
    older than `cutoff`."""
    expired_runs = (
        select(runs.c.id)
        .where(
            runs.c.session_id.is_(None),
            runs.c.finished_at < cutoff,
            runs.c.status.in_(TERMINAL_STATUSES),
        )
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    gone = await conn.execute(delete(runs).where(runs.c.id.in_(expired_runs)))
    still_used = exists().where(
        runs.c.session_id == sessions_t.c.id,
        or_(runs.c.created_at >= cutoff, runs.c.status.not_in(TERMINAL_STATUSES)),
    )
    idle = list(
        (
            await conn.execute(
                select(sessions_t.c.id)
                .where(sessions_t.c.created_at < cutoff, ~still_used)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).scalars()
    )
    if idle:
        await conn.execute(delete(runs).where(runs.c.session_id.in_(idle)))
        await conn.execute(delete(sessions_t).where(sessions_t.c.id.in_(idle)))
    return Swept(runs=gone.rowcount, sessions=len(idle))
