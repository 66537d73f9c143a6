"""Reads of the run event log, for streams that replay it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.runner.events import EventType, RunEvent
from app.store.runs import TERMINAL_STATUSES, events_t, runs

READ_LIMIT = 1000
"""Events one read returns at most; a reader behind by more reads again."""


async def list_events(
    conn: AsyncConnection, run_id: uuid.UUID, *, after: int, before: int | None = None
) -> list[RunEvent]:
    """The run's committed events with `after < seq < before`, in order. The caller
    has already checked that it may read the run."""
    query = (
        select(events_t.c.seq, events_t.c.type, events_t.c.data)
        .where(events_t.c.run_id == run_id, events_t.c.seq > after)
        .order_by(events_t.c.seq)
        .limit(READ_LIMIT)
    )
    if before is not None:
        query = query.where(events_t.c.seq < before)
    rows = (await conn.execute(query)).all()
    rid = str(run_id)
    return [RunEvent(rid, row.seq, EventType(row.type), row.data) for row in rows]


@dataclass(frozen=True, slots=True)
class LogEnd:
    next_seq: int
    """The sequence the run's next committed event will take: all below are in the log."""
    finished: bool
    """The run has ended: no event will follow."""


async def log_ends(conn: AsyncConnection, run_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, LogEnd]:
    """Where each run's log ends now."""
    found: dict[uuid.UUID, LogEnd] = {}
    for start in range(0, len(run_ids), 500):
        chunk = run_ids[start : start + 500]
        query = select(runs.c.id, runs.c.event_seq, runs.c.status).where(runs.c.id.in_(chunk))
        for row in await conn.execute(query):
            found[row.id] = LogEnd(row.event_seq, row.status in TERMINAL_STATUSES)
    return found
