"""The webhook outbox: deliveries written with the state change they announce."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, and_, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store.models import WebhookDelivery

deliveries = cast(Table, WebhookDelivery.__table__)

WEBHOOK_EVENTS = {
    "completed": "run.completed",
    "failed": "run.failed",
    "cancelled": "run.cancelled",
    "awaiting_approval": "run.awaiting_approval",
}


@dataclass(frozen=True, kw_only=True)
class Delivery:
    id: uuid.UUID
    run_id: uuid.UUID
    event_type: str
    url: str
    body: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None


async def enqueue(
    conn: AsyncConnection,
    *,
    run_id: uuid.UUID,
    url: str | None,
    status: str,
    now: datetime,
    render: Callable[[str], str],
) -> None:
    """Write the delivery announcing `status`, if the run has a webhook and it is announced.

    `render(event_type)` gives the body from the run as it is in this transaction, so a
    late delivery still tells what happened then, and every retry sends the same bytes.
    """
    event_type = WEBHOOK_EVENTS.get(status)
    if url is None or event_type is None:
        return
    await conn.execute(
        insert(deliveries).values(
            id=uuid.uuid4(),
            run_id=run_id,
            event_type=event_type,
            url=url,
            body=render(event_type),
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )


async def claim_due(
    conn: AsyncConnection, *, now: datetime, limit: int, lock_s: float
) -> list[Delivery]:
    """Take up to `limit` due deliveries; pushing `next_attempt_at` out acts as their lease."""
    due = (
        select(deliveries.c.id)
        .where(deliveries.c.status == "pending", deliveries.c.next_attempt_at <= now)
        .order_by(deliveries.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = await conn.execute(
        update(deliveries)
        .where(deliveries.c.id.in_(due.scalar_subquery()))
        .values(next_attempt_at=now + timedelta(seconds=lock_s))
        .returning(*deliveries.c)
    )
    return [Delivery(**dict(r)) for r in rows.mappings()]


async def record_attempt(
    conn: AsyncConnection,
    delivery_id: uuid.UUID,
    *,
    status: str,
    status_code: int | None,
    error: str | None,
    next_attempt_at: datetime | None,
    now: datetime,
) -> None:
    await conn.execute(
        update(deliveries)
        .where(deliveries.c.id == delivery_id)
        .values(
            status=status,
            attempts=deliveries.c.attempts + 1,
            last_status_code=status_code,
            last_error=error,
            next_attempt_at=next_attempt_at,
            delivered_at=now if status == "delivered" else None,
        )
    )


async def latest_for_run(conn: AsyncConnection, run_id: uuid.UUID) -> Delivery | None:
    row = (
        (
            await conn.execute(
                select(deliveries)
                .where(deliveries.c.run_id == run_id)
                .order_by(deliveries.c.created_at.desc())
                .limit(1)
            )
        )
        .mappings()
        .first()
    )
    return None if row is None else Delivery(**dict(row))


async def retry_failed(conn: AsyncConnection, run_id: uuid.UUID, *, now: datetime) -> int:
    """Queue every failed delivery of the run again (same webhook-id); the count."""
    result = await conn.execute(
        update(deliveries)
        .where(and_(deliveries.c.run_id == run_id, deliveries.c.status == "failed"))
        .values(status="pending", next_attempt_at=now)
    )
    return result.rowcount
