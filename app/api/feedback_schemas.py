"""Bodies of the feedback routes (`FeedbackRead`, a rating as a Run shows it, is in
`schemas.py`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from app.api.schemas import QueryTime
from app.store.feedback import LIST_LIMIT, Rating

Tag = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z0-9_-]+$")]


def _once_each(value: object) -> object:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(dict.fromkeys(value))
    return value  # for the type check to refuse


class FeedbackCreate(BaseModel):
    """Body of `POST /agent/runs/{job_id}/feedback`."""

    model_config = ConfigDict(extra="forbid")

    rating: Rating
    comment: str | None = Field(default=None, max_length=2000)
    """Shown to others (and on the Run) only through the agent's output filter."""
    tags: Annotated[list[Tag], BeforeValidator(_once_each)] = Field(
        default_factory=list, max_length=10, examples=[["wrong_answer"]]
    )
    """Up to 10 distinct, each 1-32 characters of a-z, 0-9, `_` and `-`; a repeated tag is
    kept once (before counting)."""


class FeedbackQuery(BaseModel):
    """Filters of `GET /agent/feedback`; every one given must match."""

    model_config = ConfigDict(extra="forbid")

    agent: str | None = None
    version: str | None = None
    """The agent version that served the run."""
    variant: str | None = None
    """The experiment variant that served the run."""
    rating: Rating | None = None
    since: QueryTime | None = None
    """Ratings given at or after this time (with a timezone, e.g. `2026-11-28T00:00:00Z`)."""
    until: QueryTime | None = None
    """Ratings given before this time."""
    limit: int = Field(default=100, ge=1, le=LIST_LIMIT)


class FeedbackItemRead(BaseModel):
    """A current rating in the admin list, with the run it rates."""

    job_id: str
    user_id: str
    agent: str
    agent_version: str
    experiment: str | None
    variant: str | None
    rating: Rating
    comment: str | None
    """Through the output filter of the run's agent version."""
    tags: list[str]
    created_at: datetime


class FeedbackList(BaseModel):
    """Answer of `GET /agent/feedback`: newest first."""

    feedback: list[FeedbackItemRead]
