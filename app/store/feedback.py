"""Ratings of runs by their owners: every one is kept, the latest per run and user is
`current`, and the current one is copied (comment filtered) onto the run row, where its
answers read it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, cast

from sqlalchemy import Table, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store.models import Run, RunFeedback

feedback_t = cast(Table, RunFeedback.__table__)
# Not app.store.runs.runs: that module imports this one (a run's trace shows its ratings).
runs_t = cast(Table, Run.__table__)

Rating = Literal["up", "down"]

LIST_LIMIT = 500
"""The most ratings one admin list answers with."""


@dataclass(frozen=True, kw_only=True)
class FeedbackRecord:
    """One rating as stored."""

    id: int
    run_id: uuid.UUID
    user_id: str
    rating: Rating
    comment: str | None
    """As the user wrote it: only admins see it unfiltered."""
    tags: list[str]
    current: bool
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class FeedbackEntry:
    """A current rating with the run it rates, for the admin list."""

    feedback: FeedbackRecord
    agent: str
    agent_version: str
    experiment: str | None
    variant: str | None


def _record(row: object) -> FeedbackRecord:
    return FeedbackRecord(
        id=row.id,  # type: ignore[attr-defined]
        run_id=row.run_id,  # type: ignore[attr-defined]
        user_id=row.user_id,  # type: ignore[attr-defined]
        rating=row.rating,  # type: ignore[attr-defined]
        comment=row.comment,  # type: ignore[attr-defined]
        tags=list(row.tags),  # type: ignore[attr-defined]
        current=bool(row.current),  # type: ignore[attr-defined]
        created_at=row.created_at,  # type: ignore[attr-defined]
    )


async def save_rating(
    conn: AsyncConnection,
    *,
    run_id: uuid.UUID,
    user_id: str,
    rating: Rating,
    comment: str | None,
    shown_comment: str | None,
    tags: Sequence[str],
    now: datetime,
) -> FeedbackRecord:
    """Store a rating as the current one of (run, user), the previous one kept as history,
    and show it on the run (`shown_comment`: the comment through the output filter).

    Call it with the run row locked in this transaction (`runs.get_run(..., lock=True)`):
    two ratings at once would otherwise both stay current."""
    await conn.execute(
        update(feedback_t)
        .where(
            feedback_t.c.run_id == run_id,
            feedback_t.c.user_id == user_id,
            feedback_t.c.current.is_(True),
        )
        .values(current=False)
    )
    row = (
        await conn.execute(
            insert(feedback_t)
            .values(
                run_id=run_id,
                user_id=user_id,
                rating=rating,
                comment=comment,
                tags=list(tags),
                current=True,
                created_at=now,
            )
            .returning(*feedback_t.c)
        )
    ).one()
    shown: dict[str, object] = {
        "rating": rating,
        "comment": shown_comment,
        "tags": list(tags),
        "created_at": now.isoformat(),
    }
    await conn.execute(update(runs_t).where(runs_t.c.id == run_id).values(feedback=shown))
    return _record(row)


async def history(conn: AsyncConnection, run_id: uuid.UUID) -> list[FeedbackRecord]:
    """Every rating of a run, oldest first. Check that the caller may see the run first."""
    rows = await conn.execute(
        select(feedback_t).where(feedback_t.c.run_id == run_id).order_by(feedback_t.c.id)
    )
    return [_record(r) for r in rows]


async def list_current(
    conn: AsyncConnection,
    *,
    agent: str | None = None,
    version: str | None = None,
    variant: str | None = None,
    rating: Rating | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
) -> list[FeedbackEntry]:
    """Current ratings, newest first, of runs matching every filter given; `since` is
    inclusive and `until` exclusive, on the time of the rating."""
    stmt = (
        select(
            feedback_t,
            runs_t.c.agent,
            runs_t.c.agent_version,
            runs_t.c.experiment,
            runs_t.c.variant,
        )
        .join(runs_t, runs_t.c.id == feedback_t.c.run_id)
        .where(feedback_t.c.current.is_(True))
    )
    if agent is not None:
        stmt = stmt.where(runs_t.c.agent == agent)
    if version is not None:
        stmt = stmt.where(runs_t.c.agent_version == version)
    if variant is not None:
        stmt = stmt.where(runs_t.c.variant == variant)
    if rating is not None:
        stmt = stmt.where(feedback_t.c.rating == rating)
    if since is not None:
        stmt = stmt.where(feedback_t.c.created_at >= since)
    if until is not None:
        stmt = stmt.where(feedback_t.c.created_at < until)
    stmt = stmt.order_by(feedback_t.c.created_at.desc(), feedback_t.c.id.desc())
    rows = await conn.execute(stmt.limit(min(limit, LIST_LIMIT)))
    return [
        FeedbackEntry(
            feedback=_record(r),
            agent=r.agent,
            agent_version=r.agent_version,
            experiment=r.experiment,
            variant=r.variant,
        )
        for r in rows
    ]
