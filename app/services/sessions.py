"""Stateful sessions: a conversation with one agent, one run per message.

Storage. A session is a row; each message is a run (`runs.session_id`) whose first
checkpoint is the model's context: the agent version's current instructions, the
conversation so far, the new user message. The run records how many conversation
messages (system messages never count) it inherited, `history_len`, so its own
messages are `conversation[history_len:]` and nothing is shown twice. A worker resumes a
run from its checkpoint alone, so every checkpoint holds the whole context; reads stay
linear: a new message reads only the latest run, the log reads the latest run and the
runs that did not complete.

History. The conversation after a run is, when it completed, its whole conversation
(history, user message, tool calls and results, answer); otherwise (failed, cancelled)
its history and its user message only: a partial exchange, an unanswered tool call
above all, breaks the providers' APIs. The log still shows every message of every run.
Each run's history is therefore a prefix of the next one's, which is why a completed
run's messages can be read from the latest run's context.

One message at a time. A message is refused (409) while a run of the session has not
ended. The check and the new run's insert share one transaction that holds the session's
row lock (SQLite: the write lock every transaction takes), so two messages never both
start. "Not ended" is the run's status: a run whose worker died is re-queued or failed
by the reaper, so it cannot block its session forever.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from app.agents.registry import UnknownAgent
from app.api.schemas import MessageCreate, RunCreate
from app.api.session_schemas import SessionCreate
from app.errors import Conflict, Forbidden, InvalidRequest, NotFound
from app.guards.redact import Redactor
from app.jobs.executor import RunExecutor
from app.llm.types import Message
from app.runner.state import Checkpoint
from app.services import runs, traces
from app.services.auth import Principal
from app.store import sessions as session_store
from app.store.runs import Owner, RunRecord
from app.store.sessions import SessionRecord, SessionRun


@dataclass(frozen=True, slots=True)
class SessionLog:
    session: SessionRecord
    runs: list[SessionRun]
    """In message order."""
    messages: list[tuple[uuid.UUID, Message]]
    """Every message but system ones, in order, with the id of the run that produced it."""


async def create_session(
    executor: RunExecutor, principal: Principal, body: SessionCreate
) -> SessionRecord:
    """A new, empty session with an agent that exists."""
    try:
        agent, _ = executor.rt.registry.resolve(body.agent)
    except UnknownAgent as exc:
        raise InvalidRequest(str(exc)) from None
    session = SessionRecord(
        id=uuid.uuid4(),
        user_id=principal.user_id,
        agent=agent.name,
        metadata=dict(body.metadata),
        created_at=datetime.now(UTC),
    )
    async with executor.rt.db.transaction() as conn:
        await session_store.insert_session(conn, session)
    return session


async def start_run(
    executor: RunExecutor,
    principal: Principal,
    body: RunCreate,
    *,
    pattern: str,
    inline: bool,
    idempotency_key: str | None = None,
) -> runs.StartedRun:
    """Start the run `body` asks for: a new conversation, or, when it names a `session_id`,
    the next message of that session (whose agent must be `body.agent`)."""
    turn = None
    if body.session_id is not None:
        session = await _session_to_message(executor, principal, body.session_id)
        if session.agent != body.agent:
            raise InvalidRequest(
                f"session {session.id} talks to agent '{session.agent}', not '{body.agent}'"
            )
        turn = _NextMessage(session_id=session.id, owner=principal.owner)
    return await runs.create_run(
        executor,
        principal,
        body,
        pattern=pattern,
        inline=inline,
        session=turn,
        idempotency_key=idempotency_key,
    )


async def start_message(
    executor: RunExecutor,
    principal: Principal,
    session_id: uuid.UUID,
    body: MessageCreate,
    *,
    pattern: str,
) -> runs.StartedRun:
    """Start the session's next message: a run of its agent, driven by this process, from
    the session's history. `pattern` is how it is delivered ("sync", "stream")."""
    session = await _session_to_message(executor, principal, session_id)
    request = RunCreate.model_validate(
        {**body.model_dump(exclude={"stream"}), "agent": session.agent, "session_id": session.id}
    )
    return await start_run(executor, principal, request, pattern=pattern, inline=True)


async def _session_to_message(
    executor: RunExecutor, principal: Principal, session_id: uuid.UUID
) -> SessionRecord:
    """The caller's own session (404 for anyone else's; admins may read it, not write)."""
    async with executor.rt.db.transaction() as conn:
        session = await _owned_session(conn, principal.owner, session_id)
    if session.user_id != principal.user_id:
        raise Forbidden("only the session's owner can send it messages")
    return session


async def get_session_log(
    executor: RunExecutor, principal: Principal, session_id: uuid.UUID
) -> SessionLog:
    """The session with its runs and its whole conversation (see the module docstring)."""
    async with executor.rt.db.transaction() as conn:
        session = await _owned_session(conn, principal.owner, session_id)
        session_runs = await session_store.list_runs(conn, session_id)
        wanted = {r.id for r in session_runs if r.status != "completed"}
        wanted.update(r.id for r in session_runs[-1:])
        checkpoints = await session_store.get_checkpoints(conn, wanted)
    contexts = {run_id: conversation(cp) for run_id, cp in checkpoints.items()}
    log = message_log(session_runs, contexts)
    if principal.role != "admin":
        redactor = traces.redactor_for(executor.rt.registry, session.agent, None)
        log = [(run_id, filter_message(m, redactor)) for run_id, m in log]
    return SessionLog(session, session_runs, log)


def filter_message(message: Message, redactor: Redactor) -> Message:
    """The message as users see it: its text and tool arguments through the output filter."""
    calls = [
        c.model_copy(update={"arguments": redactor.redact_json(c.arguments)})
        for c in message.tool_calls
    ]
    content = None if message.content is None else redactor.redact(message.content)
    return message.model_copy(update={"content": content, "tool_calls": calls})


async def delete_session(
    executor: RunExecutor, principal: Principal, session_id: uuid.UUID
) -> None:
    """Delete the session and its runs with everything recorded about them. Refused while
    one of its runs has not ended: cancel it first."""
    async with executor.rt.db.transaction() as conn:
        await _owned_session(conn, principal.owner, session_id, lock=True)
        active = await session_store.active_run(conn, session_id)
        if active is not None:
            raise Conflict(
                f"run {active.id} of session {session_id} is still {active.status}: "
                f"cancel it first (POST /agent/cancel/{active.id})"
            )
        await session_store.delete_session(conn, session_id)


def conversation(checkpoint: Mapping[str, object] | None) -> list[Message]:
    """A checkpoint's messages without system messages."""
    messages = Checkpoint.model_validate(checkpoint or {}).messages
    return [m for m in messages if m.role != "system"]


def next_history(last: RunRecord | None) -> list[Message]:
    """The conversation a new message continues, after the session's `last` run."""
    if last is None:
        return []
    context = conversation(last.checkpoint)
    if last.status == "completed":
        return context
    return context[: last.history_len + 1]


def message_log(
    session_runs: Sequence[SessionRun], contexts: Mapping[uuid.UUID, list[Message]]
) -> list[tuple[uuid.UUID, Message]]:
    """Each run's own messages, in order. `contexts`: the conversations of the latest run
    and of every run that did not complete; a completed run's messages are read from the
    latest run's context, between its `history_len` and the next run's."""
    latest = contexts.get(session_runs[-1].id, []) if session_runs else []
    log: list[tuple[uuid.UUID, Message]] = []
    for i, run in enumerate(session_runs):
        following = session_runs[i + 1] if i + 1 < len(session_runs) else None
        if following is not None and run.status == "completed":
            own = latest[run.history_len : following.history_len]
        else:
            own = contexts.get(run.id, [])[run.history_len :]
        log.extend((run.id, m) for m in own)
    return log


@dataclass(frozen=True, slots=True)
class _NextMessage:
    """A session taking its next message (`runs.SessionTurn`)."""

    session_id: uuid.UUID
    owner: Owner

    async def admit(self, conn: AsyncConnection) -> list[Message]:
        await _owned_session(conn, self.owner, self.session_id, lock=True)
        active = await session_store.active_run(conn, self.session_id)
        if active is not None:
            raise Conflict(
                f"session {self.session_id} is still answering a message: run {active.id} is "
                f"{active.status}; wait for it to end or cancel it "
                f"(POST /agent/cancel/{active.id})"
            )
        return next_history(await session_store.latest_run(conn, self.session_id))


async def _owned_session(
    conn: AsyncConnection, owner: Owner, session_id: uuid.UUID, *, lock: bool = False
) -> SessionRecord:
    session = await session_store.get_session(conn, session_id, owner, lock=lock)
    if session is None:
        raise NotFound(f"session {session_id} not found")
    return session
