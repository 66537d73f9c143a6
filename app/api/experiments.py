"""The experiments report: versions, A/B variants and shadow versions compared (admins)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Path, Query

from app.api.experiment_schemas import ExperimentReportRead
from app.api.schemas import QueryTime
from app.api.strict import api_router
from app.deps import PrincipalDep, ServicesDep
from app.errors import Forbidden, InvalidRequest, NotFound, Unauthorized, problem_responses
from app.services import experiments

router = api_router(tags=["rollouts"])

AgentName = Annotated[str, Path(min_length=1, max_length=128)]
Since = Annotated[
    QueryTime | None,
    Query(description="Start of the window (ISO 8601 with a timezone); default: until - 24 h"),
]
Until = Annotated[
    QueryTime | None,
    Query(description="End of the window, excluded (ISO 8601 with a timezone); default: now"),
]


@router.get(
    "/agent/experiments/{agent}",
    response_model=ExperimentReportRead,
    responses=problem_responses(Unauthorized, Forbidden, NotFound, InvalidRequest),
)
async def get_experiment_report(
    agent: AgentName,
    principal: PrincipalDep,
    services: ServicesDep,
    since: Since = None,
    until: Until = None,
) -> ExperimentReportRead:
    """Compare the agent's versions, A/B variants and shadow versions over runs created in
    [since, until) (at most 90 days): runs, success rate, errors, latency, tokens, cost,
    tool errors and thumbs-up rate, with sample sizes and 95% intervals (admins)."""
    report = await experiments.report_for(
        principal,
        db=services.db,
        registry=services.registry,
        book=services.executor.policies,
        agent=agent,
        since=since,
        until=until,
        now=datetime.now(UTC),
    )
    return ExperimentReportRead.from_report(report)
