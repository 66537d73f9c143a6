"""Operators' views: the circuit breakers of models and tools (admins)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from app.api.strict import api_router
from app.deps import PrincipalDep, ServicesDep
from app.errors import Forbidden, Unauthorized, problem_responses
from app.llm.breaker import BreakerReport
from app.services import resilience

router = api_router(tags=["admin"])


class BreakerRead(BaseModel):
    target: str
    """`llm:<provider>/<model>` or `tool:<name>`."""
    state: Literal["closed", "half_open", "open"]
    """`half_open` also when the cool-down is over and the next call will be a probe."""
    failures: int
    """Failures counted in the current window (closed)."""
    retry_in_s: float
    """Open: seconds until a call is let through again."""


class BreakerList(BaseModel):
    shared: bool
    """True: the state every replica shares (Redis); false: this process's own (no Redis
    configured, or Redis not answering)."""
    breakers: list[BreakerRead]

    @classmethod
    def from_report(cls, report: BreakerReport) -> BreakerList:
        return cls(
            shared=report.shared,
            breakers=[
                BreakerRead(
                    target=s.target,
                    state=s.state,
                    failures=s.failures,
                    retry_in_s=round(s.retry_in_s, 3),
                )
                for s in report.breakers
            ],
        )


@router.get(
    "/agent/admin/breakers",
    response_model=BreakerList,
    responses=problem_responses(Unauthorized, Forbidden),
)
async def list_breakers(principal: PrincipalDep, services: ServicesDep) -> BreakerList:
    """Circuit breakers of every model and tool, with their states (admins)."""
    return BreakerList.from_report(await resilience.list_breakers(services.executor, principal))
