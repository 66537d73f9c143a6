"""Thumbs up or down on runs (their owners), and the list of ratings (admins)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from app.api.feedback_schemas import FeedbackCreate, FeedbackItemRead, FeedbackList, FeedbackQuery
from app.api.schemas import FeedbackRead
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
from app.services import feedback, runs

router = api_router(tags=["feedback"])


@router.post(
    "/agent/runs/{job_id}/feedback",
    status_code=201,
    response_model=FeedbackRead,
    responses=problem_responses(Unauthorized, Forbidden, NotFound, Conflict, InvalidRequest),
)
async def rate_run(
    job_id: str, body: FeedbackCreate, principal: PrincipalDep, services: ServicesDep
) -> FeedbackRead:
    """Rate your finished run (a session message too, by its `job_id`). A new rating
    replaces your previous one; the trace keeps them all."""
    saved = await feedback.rate_run(services.executor, principal, runs.parse_id(job_id), body)
    return FeedbackRead.model_validate(saved, from_attributes=True)


@router.get(
    "/agent/feedback",
    response_model=FeedbackList,
    responses=problem_responses(Unauthorized, Forbidden, InvalidRequest),
)
async def list_feedback(
    query: Annotated[FeedbackQuery, Query()], principal: PrincipalDep, services: ServicesDep
) -> FeedbackList:
    """Current ratings of runs, newest first, comments through the output filter (admins)."""
    entries = await feedback.list_feedback(services.executor, principal, query)
    return FeedbackList(
        feedback=[
            FeedbackItemRead(
                job_id=str(e.feedback.run_id),
                user_id=e.feedback.user_id,
                agent=e.agent,
                agent_version=e.agent_version,
                experiment=e.experiment,
                variant=e.variant,
                rating=e.feedback.rating,
                comment=e.feedback.comment,
                tags=e.feedback.tags,
                created_at=e.feedback.created_at,
            )
            for e in entries
        ]
    )
