"""Synchronous pattern: `POST /agent` answers with the finished run, or 202 if it runs on."""

from __future__ import annotations

from fastapi import Request, Response, status

from app.api.schemas import RunCreate, RunRead
from app.api.stream import stream_url
from app.api.strict import api_router
from app.deps import IdempotencyKey, PrincipalDep, ServicesDep
from app.errors import (
    RUN_START_ERRORS,
    problem_responses,
)
from app.lifespan import Services
from app.services import runs, sessions
from app.services.auth import Principal
from app.store.runs import TERMINAL_STATUSES

router = api_router(tags=["runs"])


@router.post(
    "/agent",
    response_model=RunRead,
    responses={
        202: {"model": RunRead, "description": "Still running (or awaiting approval)"},
        **problem_responses(*RUN_START_ERRORS),
    },
)
async def run_agent(
    body: RunCreate,
    principal: PrincipalDep,
    services: ServicesDep,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> RunRead:
    """Run an agent in this process and wait up to `AGENTSVC_SYNC_TIMEOUT_S` for its end.
    A run that is still going (or waits for an approval) answers 202; poll or stream it."""
    started = await sessions.start_run(
        services.executor,
        principal,
        body,
        pattern="sync",
        inline=True,
        idempotency_key=idempotency_key,
    )
    return await answer_when_done(services, principal, started, request, response)


async def answer_when_done(
    services: Services,
    principal: Principal,
    started: runs.StartedRun,
    request: Request,
    response: Response,
) -> RunRead:
    """The sync answer: the run when it ends within `AGENTSVC_SYNC_TIMEOUT_S`, else 202
    with the run so far and where to stream the rest."""
    timeout_s = services.settings.sync_timeout_s
    if started.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    view = await runs.wait_for_run(services.executor, principal, started, timeout_s)
    if view.run.status in TERMINAL_STATUSES:
        return RunRead.from_view(view)
    response.status_code = status.HTTP_202_ACCEPTED
    return RunRead.from_view(view, stream_url=stream_url(request, services, started.run_id))
