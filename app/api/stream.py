"""SSE pattern: run an agent and stream its events, or attach to a run's stream."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Header, Query, Request, Response, status

from app.api.schemas import RunCreate
from app.api.sse import EventStream
from app.api.strict import api_router
from app.deps import IdempotencyKey, OptionalPrincipalDep, PrincipalDep, ServicesDep
from app.errors import (
    RUN_START_ERRORS,
    InvalidRequest,
    NotFound,
    Unauthorized,
    problem_responses,
)
from app.lifespan import Services
from app.services import runs, sessions
from app.services.streams import open_stream, read_to_the_end

router = api_router(tags=["stream"])

RECONNECT_MS = 2000
"""The `retry:` hint: how long an EventSource waits before it reconnects."""

STREAM_DOC: dict[int | str, dict[str, object]] = {
    200: {
        "content": {"text/event-stream": {}},
        "description": "RunEvents as Server-Sent Events: `id:` the per-run sequence, "
        "`event:` the type, `data:` JSON; the stream ends after the terminal event.",
    }
}
_ENDED_DOC: dict[int | str, dict[str, object]] = {
    204: {"description": "The run has ended and Last-Event-ID is its last event"}
}


def stream_url(request: Request, services: Services, run_id: uuid.UUID) -> str:
    """Where a browser reads the run's events: the URL carries a short-lived token
    that grants that and nothing else."""
    url = request.url_for("attach_stream", job_id=str(run_id))
    return str(url.include_query_params(token=services.stream_tokens.issue(run_id)))


def event_stream(services: Services, run_id: uuid.UUID, after: int = -1) -> EventStream:
    """The run's events after `after` as an SSE response."""
    settings = services.settings
    return EventStream(
        services.streams,
        run_id,
        after=after,
        first=b": run %s\r\nretry: %d\r\n\r\n" % (str(run_id).encode(), RECONNECT_MS),
        ping_s=settings.stream_ping_s,
        send_timeout_s=settings.stream_send_timeout_s,
        max_s=settings.stream_max_s,
    )


@router.post(
    "/agent/stream",
    response_class=EventStream,
    status_code=status.HTTP_200_OK,  # what FastAPI would read off a Response's __init__
    responses={**STREAM_DOC, **problem_responses(*RUN_START_ERRORS)},
)
async def stream_run(
    body: RunCreate,
    principal: PrincipalDep,
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> EventStream:
    """Run an agent and stream its events as they happen, the model's text included
    (`llm.delta`). Disconnecting does not stop the run: attach again with
    `GET /agent/stream/{job_id}` and `Last-Event-ID`."""
    started = await sessions.start_run(
        services.executor,
        principal,
        body,
        pattern="stream",
        inline=True,
        idempotency_key=idempotency_key,
    )
    stream = event_stream(services, started.run_id)
    if started.replayed:  # the run's events from its first, then live
        stream.raw_headers.append((b"idempotent-replayed", b"true"))
    return stream


@router.get(
    "/agent/stream/{job_id}",
    response_class=EventStream,
    status_code=status.HTTP_200_OK,  # what FastAPI would read off a Response's __init__
    responses={
        **STREAM_DOC,
        **_ENDED_DOC,
        **problem_responses(InvalidRequest, NotFound, Unauthorized),
    },
)
async def attach_stream(
    job_id: str,
    principal: OptionalPrincipalDep,
    services: ServicesDep,
    token: Annotated[str | None, Query(max_length=256)] = None,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> Response:
    """A run's events from its start, or after `Last-Event-ID`, with no gap and no
    duplicate, until its terminal event. Authorize with a key, or with the `token` of
    the run's `stream_url` (EventSource cannot send headers)."""
    run_id = runs.parse_id(job_id)
    run = await open_stream(
        services.db, services.stream_tokens, run_id, principal=principal, token=token
    )
    after = _parse_last_event_id(last_event_id)
    if read_to_the_end(run, after):
        # 204 tells an EventSource to stop reconnecting.
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return event_stream(services, run_id, after)


MAX_EVENT_ID = 2**31 - 1
"""Event sequences are 32-bit integers in the database."""


def _parse_last_event_id(value: str | None) -> int:
    if value is None or not value.strip():
        return -1
    text = value.strip()
    if not (text == "-1" or (text.isascii() and text.isdigit())) or int(text) > MAX_EVENT_ID:
        raise InvalidRequest(f"Last-Event-ID {value!r} is not an event id")
    return int(text)
