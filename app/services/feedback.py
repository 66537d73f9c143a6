"""Users' thumbs up or down on their finished runs, and the admins' list of them.

A comment is stored as written, and shown to anyone (the Run, the admin list, a user's
trace) only through the output filter of the agent version that served the run: users
write about what they saw, and may paste what they should not have."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime

from app.api.feedback_schemas import FeedbackCreate, FeedbackQuery
from app.errors import Conflict, Forbidden, NotFound
from app.guards.redact import Redactor
from app.jobs.executor import RunExecutor
from app.observability.metrics import FEEDBACK
from app.services.auth import Principal
from app.services.traces import redactor_for
from app.store import feedback as feedback_store
from app.store import runs as run_store
from app.store.feedback import FeedbackEntry, FeedbackRecord


async def rate_run(
    executor: RunExecutor, principal: Principal, run_id: uuid.UUID, body: FeedbackCreate
) -> FeedbackRecord:
    """Rate one of the caller's own finished runs; it replaces the caller's previous rating
    of it (which stays in the history). Returns the rating as others see it (comment
    filtered)."""
    rt = executor.rt
    async with rt.db.transaction() as conn:
        # Locked: two ratings at once must not both end up current.
        run = await run_store.get_run(conn, run_id, principal.owner, lock=True)
        # A shadow run served no one: nothing to rate, and its existence is not told.
        if run is None or run.shadow_of is not None:
            raise NotFound(f"run {run_id} not found")
        if run.user_id != principal.user_id:
            raise Forbidden("only the user who ran a run can rate it")
        if run.status not in run_store.TERMINAL_STATUSES:
            raise Conflict(f"run {run_id} is {run.status}: rate it once it has finished")
        redactor = redactor_for(rt.registry, run.agent, run.agent_version)
        shown = None if body.comment is None else redactor.redact(body.comment)
        saved = await feedback_store.save_rating(
            conn,
            run_id=run_id,
            user_id=principal.user_id,
            rating=body.rating,
            comment=body.comment,
            shown_comment=shown,
            tags=body.tags,
            now=datetime.now(UTC),
        )
    FEEDBACK.labels(run.agent, run.agent_version, body.rating).inc()
    return replace(saved, comment=shown)


async def list_feedback(
    executor: RunExecutor, principal: Principal, query: FeedbackQuery
) -> list[FeedbackEntry]:
    """Current ratings matching the query, newest first, comments filtered (admins)."""
    principal.require_admin("only admins list feedback")
    rt = executor.rt
    async with rt.db.transaction() as conn:
        entries = await feedback_store.list_current(
            conn,
            agent=query.agent,
            version=query.version,
            variant=query.variant,
            rating=query.rating,
            since=query.since,
            until=query.until,
            limit=query.limit,
        )
    redactors: dict[tuple[str, str], Redactor] = {}
    shown = []
    for entry in entries:
        key = (entry.agent, entry.agent_version)
        if key not in redactors:
            redactors[key] = redactor_for(rt.registry, *key)
        shown.append(replace(entry, feedback=_shown(entry.feedback, redactors[key])))
    return shown


def _shown(record: FeedbackRecord, redactor: Redactor) -> FeedbackRecord:
    """The rating with its comment through the output filter."""
    if record.comment is None:
        return record
    return replace(record, comment=redactor.redact(record.comment))
