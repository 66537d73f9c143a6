"""Human approval of high-risk tool calls: list, decide, expire."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from pydantic import ValidationError
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.errors import Conflict, Forbidden, InvalidRequest, NotFound
from app.guards.tools import describe_errors
from app.jobs.runtime import Runtime
from app.runner.events import EventType
from app.services.auth import Principal
from app.store import approvals, queue
from app.store.approvals import ApprovalRecord
from app.store.runs import ANYONE, get_run, runs


async def list_pending(rt: Runtime, principal: Principal) -> list[ApprovalRecord]:
    """Pending approvals, for approvers and admins."""
    if not principal.can_approve:
        raise Forbidden("only approvers and admins see pending approvals")
    async with rt.db.transaction() as conn:
        return await approvals.list_pending(conn)


async def decide(
    rt: Runtime,
    principal: Principal,
    approval_id: uuid.UUID,
    *,
    approve: bool,
    reason: str | None,
    arguments: dict[str, object] | None,
) -> ApprovalRecord:
    """Record an approver's decision (once) and hand the run back to the queue."""
    if not principal.can_approve:
        raise Forbidden("only approvers and admins decide approvals")
    async with rt.db.transaction() as conn:
        found = await approvals.get_approval(conn, approval_id)
        if found is None:
            raise NotFound(f"approval {approval_id} not found")
        if found.user_id == principal.user_id and not rt.settings.allow_self_approval:
            raise Forbidden("you cannot approve a call made by your own run")
        if found.status != "pending":
            raise Conflict(f"approval {approval_id} was already {found.status}")
        if found.expires_at <= datetime.now(UTC):
            raise Conflict(f"approval {approval_id} has expired")
        if approve and arguments is not None:
            arguments = _validated(rt, found.tool, arguments)
        decided = await resolve(
            conn,
            found,
            status="approved" if approve else "denied",
            decided_by=principal.user_id,
            reason=reason,
            arguments=arguments,
        )
        if decided is None:
            raise Conflict(f"approval {approval_id} was decided, or its run cancelled, meanwhile")
    rt.wakeups.ready()
    return decided


def _validated(rt: Runtime, tool_name: str, arguments: dict[str, object]) -> dict[str, object]:
    tool = rt.registry.tools.get(tool_name)
    if tool is None:
        raise InvalidRequest(f"tool {tool_name} no longer exists")
    try:
        return tool.args_model.model_validate(arguments).model_dump(mode="json")
    except ValidationError as exc:
        raise InvalidRequest(f"invalid arguments for {tool_name}: {describe_errors(exc)}") from None


async def resolve(
    conn: AsyncConnection,
    approval: ApprovalRecord,
    *,
    status: str,
    decided_by: str | None,
    reason: str | None,
    arguments: dict[str, object] | None,
) -> ApprovalRecord | None:
    """Decide a pending approval and re-queue its run with an `approval.resolved` event.
    None when it was no longer pending (decisions are single use; a cancel ends them)."""
    # The run's row lock before its approval's, the order cancel_run and the worker take
    # them in: the other order deadlocks with a cancel of the run on PostgreSQL.
    run = await get_run(conn, approval.run_id, ANYONE, lock=True)
    decided = await approvals.decide(
        conn,
        approval.id,
        status=status,
        decided_by=decided_by,
        reason=reason,
        arguments=arguments,
        now=datetime.now(UTC),
    )
    if decided is None:
        return None
    if run is not None and run.status == "awaiting_approval":
        await conn.execute(update(runs).where(runs.c.id == run.id).values(status="pending"))
        data: dict[str, object] = {
            "approval_id": str(approval.id),
            "decision": status,
            "decided_by": decided_by,
            "reason": reason,
        }
        await queue.append_events(conn, run.id, [(EventType.APPROVAL_RESOLVED, data)])
        await queue.notify(conn, queue.READY_CHANNEL)
    return decided


async def expire_due(rt: Runtime) -> int:
    """Expire approvals nobody decided in time; their runs go on and the model is told."""
    async with rt.db.transaction() as conn:
        due = await approvals.due_for_expiry(conn, now=datetime.now(UTC))
        expired = 0
        for approval in due:
            done = await resolve(
                conn, approval, status="expired", decided_by=None, reason=None, arguments=None
            )
            expired += done is not None
    if expired:
        rt.wakeups.ready()
    return expired
