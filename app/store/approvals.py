"""Approvals: server-side, single-use records of human decisions on high-risk calls."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.runner.protocols import ApprovalDecision, ApprovalRequest
from app.store.db import fitted
from app.store.models import Approval

approvals = cast(Table, Approval.__table__)


@dataclass(frozen=True, kw_only=True)
class ApprovalRecord:
    id: uuid.UUID
    run_id: uuid.UUID
    user_id: str
    tool_call_key: str
    call_id: str
    tool: str
    arguments: dict[str, object]
    status: str
    requested_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    reason: str | None
    approved_arguments: dict[str, object] | None


async def insert_approval(
    conn: AsyncConnection,
    request: ApprovalRequest,
    *,
    run_id: uuid.UUID,
    user_id: str,
    now: datetime,
    expires_at: datetime,
) -> ApprovalRecord:
    row = await conn.execute(
        insert(approvals)
        .values(
            id=uuid.UUID(request.id),
            run_id=run_id,
            user_id=user_id,
            tool_call_key=request.key,
            call_id=fitted(request.call_id, approvals.c.call_id),
            tool=request.tool,
            arguments=request.arguments,
            status="pending",
            requested_at=now,
            expires_at=expires_at,
        )
        .returning(*approvals.c)
    )
    return ApprovalRecord(**dict(row.mappings().one()))


async def get_approval(conn: AsyncConnection, approval_id: uuid.UUID) -> ApprovalRecord | None:
    row = (
        (await conn.execute(select(approvals).where(approvals.c.id == approval_id)))
        .mappings()
        .first()
    )
    return None if row is None else ApprovalRecord(**dict(row))


async def list_pending(
    conn: AsyncConnection, *, run_id: uuid.UUID | None = None, limit: int = 500
) -> list[ApprovalRecord]:
    stmt = select(approvals).where(approvals.c.status == "pending")
    if run_id is not None:
        stmt = stmt.where(approvals.c.run_id == run_id)
    rows = await conn.execute(stmt.order_by(approvals.c.requested_at).limit(limit))
    return [ApprovalRecord(**dict(r)) for r in rows.mappings()]


async def decide(
    conn: AsyncConnection,
    approval_id: uuid.UUID,
    *,
    status: str,
    decided_by: str | None,
    reason: str | None,
    arguments: dict[str, object] | None,
    now: datetime,
) -> ApprovalRecord | None:
    """Record the decision if the approval is still pending; None if it was not."""
    row = (
        (
            await conn.execute(
                update(approvals)
                .where(approvals.c.id == approval_id, approvals.c.status == "pending")
                .values(
                    status=status,
                    decided_by=decided_by,
                    reason=reason,
                    approved_arguments=arguments,
                    decided_at=now,
                )
                .returning(*approvals.c)
            )
        )
        .mappings()
        .first()
    )
    return None if row is None else ApprovalRecord(**dict(row))


async def due_for_expiry(
    conn: AsyncConnection, *, now: datetime, limit: int = 100
) -> list[ApprovalRecord]:
    """Pending approvals past their expiry, by run: expiring them locks their runs in one
    order, so two workers expiring at once cannot deadlock."""
    rows = await conn.execute(
        select(approvals)
        .where(approvals.c.status == "pending", approvals.c.expires_at <= now)
        .order_by(approvals.c.run_id, approvals.c.id)
        .limit(limit)
    )
    return [ApprovalRecord(**dict(r)) for r in rows.mappings()]


async def cancel_pending(conn: AsyncConnection, run_id: uuid.UUID, *, now: datetime) -> None:
    """Cancel the run's pending approvals. Hold the run's row lock first (get_run with
    `lock`), as every writer of approvals does: the other order deadlocks."""
    await conn.execute(
        update(approvals)
        .where(approvals.c.run_id == run_id, approvals.c.status == "pending")
        .values(status="cancelled", decided_at=now)
    )


async def decisions_for_run(
    conn: AsyncConnection, run_id: uuid.UUID
) -> dict[str, ApprovalDecision]:
    """Decided approvals of a run, by tool-call key, for the runner to act on."""
    rows = await conn.execute(
        select(approvals).where(
            approvals.c.run_id == run_id,
            approvals.c.status.in_(("approved", "denied", "expired")),
        )
    )
    return {
        r.tool_call_key: ApprovalDecision(
            status=r.status,
            arguments=r.approved_arguments,
            reason=r.reason,
            decided_by=r.decided_by,
        )
        for r in rows
    }
