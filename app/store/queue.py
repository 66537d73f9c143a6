"""The runs table as a queue: claim under a lease, renew it, reap runs whose worker died.

Writers that do not hold a run (cancel, approval decisions, the reaper) append events
through `append_events`, which takes sequence numbers from `runs.event_seq` under the
row's lock; the holder of a run writes `event_seq` with every checkpoint.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.observability.recording import observe_run_end
from app.runner.events import EventType, RunEvent
from app.runner.state import Checkpoint
from app.store import pg_fast, sessions, webhooks
from app.store.db import Database
from app.store.runs import (
    NewRun,
    RunRecord,
    insert_events,
    insert_run,
    record_from_row,
    run_values,
    runs,
)
from app.store.views import RunView, WebhookRenderer

READY_CHANNEL = "agentsvc_ready"
CLAIMED_CHANNEL = "agentsvc_claimed"
"""`<owner> <taken> <asked>` after each claim that took runs (PostgreSQL)."""
CANCEL_CHANNEL = "agentsvc_cancel"


async def notify(conn: AsyncConnection, channel: str, payload: str = "") -> None:
    """A wake-up delivered at commit (PostgreSQL); other databases rely on in-process
    wake-ups and polling. At most one per transaction: NOTIFY serializes commits."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": channel, "p": payload})


async def add_run(
    db: Database, run: NewRun, *, checkpoint: Checkpoint, events: Sequence[RunEvent]
) -> None:
    """Store a new run with its first events. A queued one wakes the workers. On
    PostgreSQL either is a single statement (the hot paths)."""
    queued = run.status == "pending"
    if db.is_postgres:
        values = run_values(run, checkpoint)
        if queued:
            await pg_fast.submit_run(
                db.engine, values, events, run.created_at, channel=READY_CHANNEL
            )
        else:
            await pg_fast.start_run(db.engine, values, events, run.created_at)
        return
    async with db.transaction() as conn:
        await insert_run(conn, run, checkpoint=checkpoint, events=events)
        if queued:
            await notify(conn, READY_CHANNEL)


async def claim_runs(
    db: Database, *, owner: str, lease_s: float, limit: int, now: datetime
) -> list[RunRecord]:
    """Take up to `limit` pending runs, most urgent and oldest first, under a fresh lease
    (on PostgreSQL one autocommit statement: atomic alone, no BEGIN/COMMIT round trips)."""
    expires = now + timedelta(seconds=lease_s)
    if db.is_postgres:
        rows = await pg_fast.claim_runs(
            db.engine,
            owner=owner,
            lease_expires_at=expires,
            limit=limit,
            now=now,
            channel=CLAIMED_CHANNEL,
        )
        return [record_from_row(r) for r in rows]
    picked = (
        select(runs.c.id)
        .where(runs.c.status == "pending")
        .order_by(runs.c.priority.desc(), runs.c.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("picked")
    )
    async with db.transaction() as conn:
        result = await conn.execute(
            update(runs)
            .where(runs.c.id == picked.c.id)
            .values(
                status="running",
                lease_owner=owner,
                lease_expires_at=expires,
                attempt=runs.c.attempt + 1,
                started_at=func.coalesce(runs.c.started_at, now),
            )
            .returning(*runs.c)
        )
        return [record_from_row(r) for r in result.mappings()]


async def pending_summary(conn: AsyncConnection) -> tuple[int, datetime | None]:
    """How many runs wait to be claimed, and when the oldest of them was created."""
    stmt = select(func.count(), func.min(runs.c.created_at)).where(runs.c.status == "pending")
    count, oldest = (await conn.execute(stmt)).one()
    return int(count), oldest


async def renew_leases(
    conn: AsyncConnection, *, owner: str, lease_s: float, now: datetime
) -> dict[uuid.UUID, tuple[int, bool]]:
    """Extend every lease `owner` holds; {run id: (attempt, cancel requested)}."""
    rows = await conn.execute(
        update(runs)
        .where(runs.c.lease_owner == owner, runs.c.status == "running")
        .values(lease_expires_at=now + timedelta(seconds=lease_s))
        .returning(runs.c.id, runs.c.attempt, runs.c.cancel_requested)
    )
    return {r.id: (r.attempt, r.cancel_requested) for r in rows}


async def append_events(
    conn: AsyncConnection, run_id: uuid.UUID, items: Sequence[tuple[EventType, dict[str, object]]]
) -> list[RunEvent]:
    """Append events to a run nobody holds, numbering them after the last one."""
    end = (
        await conn.execute(
            update(runs)
            .where(runs.c.id == run_id)
            .values(event_seq=runs.c.event_seq + len(items))
            .returning(runs.c.event_seq)
        )
    ).scalar_one()
    start = end - len(items)
    events = [
        RunEvent(str(run_id), start + i, type_, data) for i, (type_, data) in enumerate(items)
    ]
    await insert_events(conn, events)
    return events


async def finish_unowned(
    conn: AsyncConnection,
    run: RunRecord,
    *,
    status: str,
    now: datetime,
    render_webhook: WebhookRenderer,
    error: dict[str, object] | None = None,
) -> list[RunEvent]:
    """End a run no worker holds (cancel, too many crashes): state, event, webhook."""
    row = await conn.execute(
        update(runs)
        .where(runs.c.id == run.id)
        .values(
            status=status,
            error=error,
            finished_at=now,
            lease_owner=None,
            lease_expires_at=None,
        )
        .returning(*runs.c)
    )
    ended = record_from_row(row.mappings().one())
    cost = None if run.session_id is None else await sessions.session_cost(conn, run.session_id)
    observe_run_end(ended, session_cost_usd=cost)
    data: dict[str, object] = {"usage": run.usage()}
    if error is not None:
        data["error"] = error
    type_ = EventType.RUN_CANCELLED if status == "cancelled" else EventType.RUN_FAILED
    events = await append_events(conn, run.id, [(type_, data)])
    view = RunView(ended, [], None)
    await webhooks.enqueue(
        conn,
        run_id=run.id,
        url=run.webhook_url,
        status=status,
        now=now,
        render=lambda event_type: render_webhook(event_type, view),
    )
    return events


async def reap_expired(
    conn: AsyncConnection,
    *,
    now: datetime,
    max_attempts: int,
    render_webhook: WebhookRenderer,
    limit: int = 100,
) -> list[uuid.UUID]:
    """Hand runs whose worker stopped renewing its lease back to the queue; a run that has
    lost `max_attempts` workers ends `failed`/`interrupted`. Returns the re-queued ids."""
    picked = (
        select(runs.c.id)
        .where(runs.c.status == "running", runs.c.lease_expires_at < now)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("expired")
    )
    rows = await conn.execute(
        update(runs)
        .where(runs.c.id == picked.c.id)
        .values(
            status="pending",
            lease_owner=None,
            lease_expires_at=None,
            crashes=runs.c.crashes + 1,
        )
        .returning(*runs.c)
    )
    requeued = []
    for run in [record_from_row(r) for r in rows.mappings()]:
        if run.crashes >= max_attempts:
            error: dict[str, object] = {
                "type": "interrupted",
                "message": f"the run lost its worker {run.crashes} times and was given up",
            }
            await finish_unowned(
                conn, run, status="failed", now=now, error=error, render_webhook=render_webhook
            )
        else:
            requeued.append(run.id)
    return requeued


async def hand_back(conn: AsyncConnection, run_id: uuid.UUID, *, owner: str, attempt: int) -> bool:
    """Put a run `owner` holds at `attempt` back in the queue as its last commit left it:
    lease released, not counted as a crash, other workers told. False if it was not held."""
    result = await conn.execute(
        update(runs)
        .where(
            runs.c.id == run_id,
            runs.c.lease_owner == owner,
            runs.c.attempt == attempt,
            runs.c.status == "running",
        )
        .values(status="pending", lease_owner=None, lease_expires_at=None)
        .returning(runs.c.id)
    )
    if result.first() is None:
        return False
    await notify(conn, READY_CHANNEL)
    return True


async def request_cancel(conn: AsyncConnection, run_id: uuid.UUID) -> None:
    """Flag a running run; its holder stops at the next step boundary."""
    await conn.execute(update(runs).where(runs.c.id == run_id).values(cancel_requested=True))


async def take_shadow_due(conn: AsyncConnection, *, limit: int = 50) -> list[RunRecord]:
    """Live runs sampled for shadowing that have ended, their mark cleared (the caller
    queues their shadow runs in the same transaction). Returns them as they were."""
    picked = (
        select(runs.c.id)
        .where(
            runs.c.shadow_version.is_not(None),
            runs.c.status.in_(("completed", "failed", "cancelled")),
        )
        .order_by(runs.c.finished_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = (await conn.execute(select(runs).where(runs.c.id.in_(picked)))).mappings().all()
    due = [record_from_row(r) for r in rows]
    if due:
        await conn.execute(
            update(runs).where(runs.c.id.in_([r.id for r in due])).values(shadow_version=None)
        )
    return due
