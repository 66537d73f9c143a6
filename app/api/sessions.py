"""Stateful pattern: a session keeps the conversation; each message is a run with its history."""

from __future__ import annotations

from fastapi import Request, Response, status

from app.api.schemas import MessageCreate, RunRead
from app.api.session_schemas import SessionCreate, SessionLogRead, SessionRead
from app.api.stream import STREAM_DOC, event_stream
from app.api.strict import api_router
from app.api.sync import answer_when_done
from app.deps import PrincipalDep, ServicesDep
from app.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    problem_responses,
)
from app.services import runs, sessions

router = api_router(tags=["sessions"])


@router.post(
    "/agent/sessions",
    status_code=status.HTTP_201_CREATED,
    response_model=SessionRead,
    responses=problem_responses(InvalidRequest, Unauthorized, PayloadTooLarge),
)
async def create_session(
    body: SessionCreate, principal: PrincipalDep, services: ServicesDep
) -> SessionRead:
    """Start a conversation with an agent; send it messages at `/agent/sessions/{id}/messages`."""
    session = await sessions.create_session(services.executor, principal, body)
    return SessionRead.from_record(session)


@router.post(
    "/agent/sessions/{session_id}/messages",
    response_model=RunRead,
    responses={
        202: {"model": RunRead, "description": "Still running (or awaiting approval)"},
        **STREAM_DOC,
        **problem_responses(
            InvalidRequest, Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge
        ),
    },
)
async def send_message(
    session_id: str,
    body: MessageCreate,
    principal: PrincipalDep,
    services: ServicesDep,
    request: Request,
    response: Response,
) -> RunRead | Response:
    """Run the session's agent on the conversation so far plus this message, like
    `POST /agent`: 200 when it ends within `AGENTSVC_SYNC_TIMEOUT_S`, else 202; with
    `"stream": true`, its events as Server-Sent Events, like `POST /agent/stream`. While an
    earlier message's run has not ended, 409."""
    pattern = "stream" if body.stream else "sync"
    started = await sessions.start_message(
        services.executor, principal, runs.parse_id(session_id, "session"), body, pattern=pattern
    )
    if body.stream:
        return event_stream(services, started.run_id)
    return await answer_when_done(services, principal, started, request, response)


@router.get(
    "/agent/sessions/{session_id}",
    response_model=SessionLogRead,
    responses=problem_responses(NotFound, Unauthorized),
)
async def get_session(
    session_id: str, principal: PrincipalDep, services: ServicesDep
) -> SessionLogRead:
    """The session, its runs and every message (system messages aside), each tagged with
    the run that produced it."""
    log = await sessions.get_session_log(
        services.executor, principal, runs.parse_id(session_id, "session")
    )
    return SessionLogRead.from_log(log)


@router.delete(
    "/agent/sessions/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(NotFound, Conflict, Unauthorized),
)
async def delete_session(session_id: str, principal: PrincipalDep, services: ServicesDep) -> None:
    """Delete the session and its runs, with their events and traces. 409 while one of its
    runs has not ended: cancel it first."""
    await sessions.delete_session(
        services.executor, principal, runs.parse_id(session_id, "session")
    )
