"""Cost: the caller's token usage and budget; admins set per-user budgets."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from app.api.strict import api_router
from app.deps import PrincipalDep, ServicesDep
from app.errors import (
    Forbidden,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    problem_responses,
)
from app.services import budgets
from app.services.budgets import UsageReport

router = api_router(tags=["cost"])

UserName = Annotated[str, Path(min_length=1, max_length=128)]


class WindowRead(BaseModel):
    start: datetime
    reset_at: datetime
    """When the budget is whole again (new requests refused before then get `Retry-After`
    up to this time)."""
    seconds: int


class OverrideRead(BaseModel):
    tokens_per_window: int | None
    updated_at: datetime
    updated_by: str


class UsageRead(BaseModel):
    """A user's tokens and cost in the current budget window."""

    user: str
    window: WindowRead
    budget_tokens: int | None
    """Tokens (input + output) per window; null: unlimited."""
    budget_source: Literal["default", "override"]
    used_tokens: int
    """Real usage of the window's finished LLM calls."""
    reserved_tokens: int
    """Worst case held by LLM calls in flight."""
    remaining_tokens: int | None
    """Budget minus used and reserved; null when unlimited."""
    cost_usd: float
    exhausted: bool
    """New requests are refused (429) until `window.reset_at`."""

    @classmethod
    def from_report(cls, report: UsageReport) -> UsageRead:
        window, usage = report.window, report.usage
        return cls(
            user=report.user_id,
            window=WindowRead(
                start=datetime.fromtimestamp(window.start, UTC),
                reset_at=datetime.fromtimestamp(window.reset_at, UTC),
                seconds=report.budget.window_s,
            ),
            budget_tokens=report.budget.tokens_per_window,
            budget_source="default" if report.override is None else "override",
            used_tokens=usage.used_tokens,
            reserved_tokens=usage.reserved_tokens,
            remaining_tokens=report.remaining_tokens,
            cost_usd=round(usage.cost_usd, 10),
            exhausted=report.exhausted,
        )


class BudgetRead(UsageRead):
    """A user's budget as admins see it, with the override that sets it."""

    override: OverrideRead | None

    @classmethod
    def with_override(cls, report: UsageReport) -> BudgetRead:
        o = report.override
        override = (
            None
            if o is None
            else OverrideRead(
                tokens_per_window=o.tokens_per_window,
                updated_at=o.updated_at,
                updated_by=o.updated_by,
            )
        )
        usage = UsageRead.from_report(report)
        return cls.model_validate({**usage.model_dump(), "override": override})


class BudgetUpdate(BaseModel):
    """Body of `PUT /agent/admin/budgets/{user}`."""

    model_config = ConfigDict(extra="forbid")

    tokens_per_window: int | None = Field(ge=0, le=10**15, examples=[200_000])
    """The user's own budget per window; null: unlimited; 0: no LLM call."""


@router.get(
    "/agent/usage",
    response_model=UsageRead,
    responses=problem_responses(Unauthorized, TooManyRequests, ServiceUnavailable),
)
async def get_usage(principal: PrincipalDep, services: ServicesDep) -> UsageRead:
    """The caller's tokens, cost and budget in the current window."""
    report = await services.executor.budgets.usage(principal.user_id)
    return UsageRead.from_report(report)


_ADMIN_ERRORS = problem_responses(
    Unauthorized, Forbidden, InvalidRequest, TooManyRequests, ServiceUnavailable
)


@router.get("/agent/admin/budgets/{user}", response_model=BudgetRead, responses=_ADMIN_ERRORS)
async def get_budget(user: UserName, principal: PrincipalDep, services: ServicesDep) -> BudgetRead:
    """A user's budget, override and usage (admins)."""
    report = await budgets.read_budget(services.executor.budgets, principal, user)
    return BudgetRead.with_override(report)


@router.put("/agent/admin/budgets/{user}", response_model=BudgetRead, responses=_ADMIN_ERRORS)
async def put_budget(
    user: UserName, body: BudgetUpdate, principal: PrincipalDep, services: ServicesDep
) -> BudgetRead:
    """Give a user their own token budget per window (admins). Every replica applies it
    within 5 s."""
    report = await budgets.put_budget(
        services.executor.budgets, principal, user, body.tokens_per_window
    )
    return BudgetRead.with_override(report)


@router.delete(
    "/agent/admin/budgets/{user}",
    response_model=BudgetRead,
    responses=problem_responses(
        Unauthorized, Forbidden, NotFound, TooManyRequests, ServiceUnavailable
    ),
)
async def delete_budget(
    user: UserName, principal: PrincipalDep, services: ServicesDep
) -> BudgetRead:
    """Put a user back on `AGENTSVC_DEFAULT_TOKEN_BUDGET` (admins)."""
    report = await budgets.delete_budget(services.executor.budgets, principal, user)
    return BudgetRead.with_override(report)
