"""Agents' traffic policies, one row per agent with a revision counter."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store.models import TrafficPolicy, json_text
from app.store.runs import runs

policies_t = cast(Table, TrafficPolicy.__table__)


@dataclass(frozen=True, kw_only=True)
class PolicyRecord:
    agent: str
    policy: dict[str, object]
    """The TrafficPolicy document (app/agents/policy.py)."""
    revision: int
    updated_at: datetime
    updated_by: str


def _record(row: object) -> PolicyRecord:
    return PolicyRecord(
        agent=row.agent,  # type: ignore[attr-defined]
        policy=row.policy,  # type: ignore[attr-defined]
        revision=row.revision,  # type: ignore[attr-defined]
        updated_at=row.updated_at,  # type: ignore[attr-defined]
        updated_by=row.updated_by,  # type: ignore[attr-defined]
    )


async def list_policies(conn: AsyncConnection) -> list[PolicyRecord]:
    rows = await conn.execute(select(policies_t))
    return [_record(r) for r in rows]


async def get_policy(
    conn: AsyncConnection, agent: str, *, lock: bool = False
) -> PolicyRecord | None:
    stmt = select(policies_t).where(policies_t.c.agent == agent)
    if lock:
        stmt = stmt.with_for_update()
    row = (await conn.execute(stmt)).first()
    return None if row is None else _record(row)


async def put_policy(
    conn: AsyncConnection,
    agent: str,
    policy: dict[str, object],
    *,
    now: datetime,
    by: str,
    expect_revision: int | None,
) -> PolicyRecord | None:
    """Write the agent's policy as the next revision after `expect_revision` (None: the
    agent has none yet; a concurrent first write then fails on the primary key). None when
    another writer got there first."""
    values = {"policy": policy, "updated_at": now, "updated_by": by}
    if expect_revision is None:
        try:
            await conn.execute(insert(policies_t).values(agent=agent, revision=1, **values))
        except IntegrityError:
            return None
        return PolicyRecord(agent=agent, revision=1, **values)  # type: ignore[arg-type]
    result = await conn.execute(
        update(policies_t)
        .where(policies_t.c.agent == agent, policies_t.c.revision == expect_revision)
        .values(revision=expect_revision + 1, **values)
    )
    if result.rowcount == 0:
        return None
    return PolicyRecord(agent=agent, revision=expect_revision + 1, **values)  # type: ignore[arg-type]


async def latest_outcomes(
    conn: AsyncConnection, agent: str, version: str, *, limit: int
) -> list[tuple[bool, float | None]]:
    """The agent version's latest finished live runs as (failed, seconds from start to
    end), newest first. Cancelled and shadow runs are left out, and so are runs stopped by
    their user's token budget: a spent budget says nothing about the version."""
    rows = await conn.execute(
        select(runs.c.status, runs.c.started_at, runs.c.finished_at)
        .where(
            runs.c.agent == agent,
            runs.c.agent_version == version,
            runs.c.shadow_of.is_(None),
            runs.c.status.in_(("completed", "failed")),
            func.coalesce(json_text(runs.c.error, "type"), "") != "budget_exceeded",
        )
        .order_by(runs.c.created_at.desc())
        .limit(limit)
    )
    return [
        (
            r.status == "failed",
            None
            if r.started_at is None or r.finished_at is None
            else (r.finished_at - r.started_at).total_seconds(),
        )
        for r in rows
    ]
