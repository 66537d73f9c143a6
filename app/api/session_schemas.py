"""Bodies of the session routes."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas import AgentName, MetadataValue, RunError, RunStatus

if TYPE_CHECKING:
    from app.services.sessions import SessionLog
    from app.store.sessions import SessionRecord


class SessionCreate(BaseModel):
    """Body of `POST /agent/sessions`."""

    model_config = ConfigDict(extra="forbid")

    agent: AgentName
    metadata: dict[str, MetadataValue] = Field(default_factory=dict, max_length=64)


class SessionRead(BaseModel):
    session_id: str
    agent: str
    metadata: dict[str, MetadataValue]
    created_at: datetime

    @classmethod
    def from_record(cls, s: SessionRecord) -> SessionRead:
        return cls(
            session_id=str(s.id),
            agent=s.agent,
            metadata=s.metadata,  # type: ignore[arg-type]
            created_at=s.created_at,
        )


class SessionRunRead(BaseModel):
    run_id: str
    status: RunStatus
    error: RunError | None
    created_at: datetime
    finished_at: datetime | None


class SessionToolCallRead(BaseModel):
    id: str
    name: str
    arguments: dict[str, object]


class SessionMessageRead(BaseModel):
    """One conversation message, tagged with the run (message) that produced it."""

    run_id: str
    role: Literal["user", "assistant", "tool"]
    content: str | None
    """For `tool`: the tool's result (`error: …` when it failed)."""
    tool_calls: list[SessionToolCallRead]
    tool_call_id: str | None
    """For `tool`: the call it answers."""
    name: str | None
    """For `tool`: the tool's name."""


class SessionLogRead(SessionRead):
    """A session with every message in order and every run (message) with its outcome."""

    status: RunStatus | None
    """Of its latest run; null before the first message."""
    runs: list[SessionRunRead]
    messages: list[SessionMessageRead]

    @classmethod
    def from_log(cls, log: SessionLog) -> SessionLogRead:
        runs = [
            SessionRunRead(
                run_id=str(r.id),
                status=r.status,  # type: ignore[arg-type]
                error=RunError.model_validate(r.error) if r.error else None,
                created_at=r.created_at,
                finished_at=r.finished_at,
            )
            for r in log.runs
        ]
        messages = [
            SessionMessageRead(
                run_id=str(run_id),
                role=m.role,  # type: ignore[arg-type]
                content=m.content,
                tool_calls=[
                    SessionToolCallRead(id=c.id, name=c.name, arguments=c.arguments)
                    for c in m.tool_calls
                ],
                tool_call_id=m.tool_call_id,
                name=m.name,
            )
            for run_id, m in log.messages
        ]
        base = SessionRead.from_record(log.session)
        status = runs[-1].status if runs else None
        return cls(**base.model_dump(), status=status, runs=runs, messages=messages)
