"""Human approval of high-risk tool calls."""

from __future__ import annotations

from app.api.schemas import FILTER_ALL, ApprovalDecisionBody, ApprovalList, ApprovalRead
from app.api.strict import api_router
from app.deps import PrincipalDep, ServicesDep
from app.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unauthorized,
    problem_responses,
)
from app.guards.redact import NO_REDACTION
from app.services import approvals
from app.services.runs import parse_id

router = api_router(tags=["approvals"])


@router.get(
    "/agent/approvals",
    response_model=ApprovalList,
    responses=problem_responses(Unauthorized, Forbidden),
)
async def list_approvals(principal: PrincipalDep, services: ServicesDep) -> ApprovalList:
    """Pending approvals (approvers and admins)."""
    pending = await approvals.list_pending(services.executor.rt, principal)
    redactor = NO_REDACTION if principal.role == "admin" else FILTER_ALL
    return ApprovalList(approvals=[ApprovalRead.from_record(a, redactor=redactor) for a in pending])


@router.post(
    "/agent/approvals/{approval_id}",
    response_model=ApprovalRead,
    responses=problem_responses(Unauthorized, Forbidden, NotFound, Conflict, InvalidRequest),
)
async def decide_approval(
    approval_id: str, body: ApprovalDecisionBody, principal: PrincipalDep, services: ServicesDep
) -> ApprovalRead:
    """Approve (optionally with edited arguments) or deny, once. The run then resumes."""
    decided = await approvals.decide(
        services.executor.rt,
        principal,
        parse_id(approval_id, "approval"),
        approve=body.decision == "approve",
        reason=body.reason,
        arguments=body.arguments,
    )
    return ApprovalRead.from_record(decided)
