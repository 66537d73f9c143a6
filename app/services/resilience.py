"""Circuit breakers as operators see them."""

from __future__ import annotations

from app.jobs.executor import RunExecutor
from app.llm.breaker import BreakerReport, BreakerSnapshot
from app.services.auth import Principal


async def list_breakers(executor: RunExecutor, principal: Principal) -> BreakerReport:
    """Every model and tool breaker with its state (admins): those this process knows of,
    closed unless the store says otherwise, and any other the store holds."""
    principal.require_admin("only admins see circuit breakers")
    resilience = executor.resilience
    report = await resilience.breakers.snapshot()
    stored = {shot.target: shot for shot in report.breakers}
    known = {t: BreakerSnapshot(t, "closed", 0, 0.0) for t in resilience.targets()}
    merged = known | stored
    return BreakerReport(report.shared, [merged[t] for t in sorted(merged)])
