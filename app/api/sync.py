"""Synchronous pattern: `POST /agent` answers with the finished run, or 202 if it runs on."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response, status

from app.api.schemas import TERMINAL_STATUSES, RunCreate, RunRead
from app.deps import PrincipalDep, ServicesDep
from app.errors import InvalidRequest, PayloadTooLarge, Unauthorized, problem_responses
from app.services import runs

router = APIRouter(tags=["runs"])


@router.post(
    "/agent",
    response_model=RunRead,
    responses={
        202: {"model": RunRead, "description": "Still running after the sync timeout"},
        **problem_responses(InvalidRequest, Unauthorized, PayloadTooLarge),
    },
)
async def run_agent(
    body: RunCreate, principal: PrincipalDep, services: ServicesDep, response: Response
) -> RunRead:
    """Run an agent and wait up to `AGENTSVC_SYNC_TIMEOUT_S` for its end."""
    started = await runs.start_inline_run(services.executor, principal, body, pattern="sync")
    await asyncio.wait({started.task}, timeout=services.settings.sync_timeout_s)
    run = await runs.get_run(services.executor, principal, started.run_id)
    if run.status not in TERMINAL_STATUSES:
        response.status_code = status.HTTP_202_ACCEPTED
    return RunRead.from_record(run)
