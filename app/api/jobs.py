"""Job pattern: poll a run's status."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.schemas import RunRead
from app.deps import PrincipalDep, ServicesDep
from app.errors import NotFound, Unauthorized, problem_responses
from app.services import runs

router = APIRouter(tags=["runs"])


@router.get(
    "/agent/status/{job_id}",
    response_model=RunRead,
    responses=problem_responses(NotFound, Unauthorized),
)
async def get_status(job_id: str, principal: PrincipalDep, services: ServicesDep) -> RunRead:
    """The run as it is now."""
    run = await runs.get_run(services.executor, principal, runs.parse_run_id(job_id))
    return RunRead.from_record(run)
