"""Job pattern: submit to the queue, poll, cancel; re-send a failed webhook."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request, Response, status

from app.api.run_list_schemas import RunPage, RunQuery
from app.api.schemas import JobAccepted, RunCreate, RunRead
from app.api.stream import stream_url
from app.api.strict import api_router
from app.deps import IdempotencyKey, PrincipalDep, ServicesDep
from app.errors import (
    RUN_START_ERRORS,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unauthorized,
    problem_responses,
)
from app.services import run_list, runs, sessions

router = api_router(tags=["jobs"])


@router.post(
    "/agent/submit",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses=problem_responses(*RUN_START_ERRORS),
)
async def submit(
    body: RunCreate,
    principal: PrincipalDep,
    services: ServicesDep,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobAccepted:
    """Queue a run for a worker; poll `status_url`, or give `webhook_url` to be called."""
    started = await sessions.start_run(
        services.executor,
        principal,
        body,
        pattern="job",
        inline=False,
        idempotency_key=idempotency_key,
    )
    if started.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    job_id = str(started.run_id)
    return JobAccepted(
        job_id=job_id,
        status="pending",
        status_url=str(request.url_for("get_status", job_id=job_id)),
        stream_url=stream_url(request, services, started.run_id),
    )


@router.get(
    "/agent/runs",
    response_model=RunPage,
    responses=problem_responses(InvalidRequest, Unauthorized, Forbidden),
)
async def list_runs(
    query: Annotated[RunQuery, Query()],
    principal: PrincipalDep,
    services: ServicesDep,
    request: Request,
) -> RunPage:
    """The caller's runs, newest first (admins: everyone's, or `user`'s), filtered by
    status, agent or session; `next_before` fetches the next page."""
    views, more = await run_list.list_runs(services.executor, principal, query)
    return RunPage(
        runs=[
            RunRead.from_view(v, stream_url=stream_url(request, services, v.run.id)) for v in views
        ],
        next_before=str(views[-1].run.id) if more else None,
    )


@router.get(
    "/agent/status/{job_id}",
    response_model=RunRead,
    responses=problem_responses(NotFound, Unauthorized),
)
async def get_status(
    job_id: str, principal: PrincipalDep, services: ServicesDep, request: Request
) -> RunRead:
    """The run as it is now."""
    run_id = runs.parse_id(job_id)
    view = await runs.get_run(services.executor, principal, run_id)
    return RunRead.from_view(view, stream_url=stream_url(request, services, run_id))


@router.post(
    "/agent/cancel/{job_id}",
    response_model=RunRead,
    responses=problem_responses(NotFound, Unauthorized),
)
async def cancel(job_id: str, principal: PrincipalDep, services: ServicesDep) -> RunRead:
    """Cancel a run: a queued or paused one at once, a running one at its next step
    (aborting its LLM call). A finished run is returned unchanged."""
    view = await runs.cancel_run(services.executor, principal, runs.parse_id(job_id))
    return RunRead.from_view(view)


@router.post(
    "/agent/runs/{job_id}/webhook/retry",
    response_model=RunRead,
    responses=problem_responses(NotFound, Conflict, Unauthorized),
)
async def retry_webhook(job_id: str, principal: PrincipalDep, services: ServicesDep) -> RunRead:
    """Send the run's failed webhook deliveries again (same `webhook-id`)."""
    view = await runs.retry_webhook(services.executor, principal, runs.parse_id(job_id))
    return RunRead.from_view(view)
