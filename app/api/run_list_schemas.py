"""Bodies of `GET /agent/runs`: a caller's runs, newest first, a page at a time."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas import RunRead, RunStatus

PAGE_MAX = 100


class RunQuery(BaseModel):
    """Filters of `GET /agent/runs`; every one given must match."""

    model_config = ConfigDict(extra="forbid")

    status: RunStatus | None = None
    agent: str | None = Field(default=None, max_length=128)
    session_id: uuid.UUID | None = None
    user: str | None = Field(default=None, max_length=128)
    """Admins: one user's runs (everyone else always sees only their own)."""
    before: uuid.UUID | None = None
    """The `next_before` of the previous page: runs older than that one."""
    limit: int = Field(default=20, ge=1, le=PAGE_MAX)


class RunPage(BaseModel):
    runs: list[RunRead]
    next_before: str | None
    """Pass as `before` for the next page; null on the last one."""
