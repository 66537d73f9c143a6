"""Request and response bodies of the HTTP contract."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from app.guards.redact import Redactor
from app.store.approvals import ApprovalRecord
from app.store.webhooks import Delivery

if TYPE_CHECKING:
    from app.store.runs import RunRecord
    from app.store.views import RunView

FILTER_ALL = Redactor()

_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _in_range(value: datetime) -> datetime:
    if not _EARLIEST <= value <= _LATEST:
        raise ValueError("must lie between 1970-01-01 and 9000-01-01 (UTC)")
    return value


QueryTime = Annotated[AwareDatetime, AfterValidator(_in_range)]
"""A time a query is bounded by: with a timezone, between 1970 and 9000 (so that any window
around it can be computed and stored)."""
RunStatus = Literal["pending", "running", "awaiting_approval", "completed", "failed", "cancelled"]
MetadataValue = str | int | float | bool | None


AgentName = Annotated[str, Field(min_length=1, max_length=128, examples=["assistant"])]


class RunInput(BaseModel):
    """The part of a run's request that is not about which agent runs or where its
    result goes."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(min_length=1, max_length=200_000, examples=["What is 17*23?"])
    metadata: dict[str, MetadataValue] = Field(default_factory=dict, max_length=64)
    max_turns: int | None = Field(default=None, ge=1, le=100)
    """Lower the agent's turn limit for this run (never raise it)."""
    timeout_s: float | None = Field(default=None, gt=0, le=86_400)
    """Lower the agent's time limit for this run (never raise it)."""


class MessageCreate(RunInput):
    """Body of `POST /agent/sessions/{id}/messages`."""

    stream: bool = False
    """Answer with the run's events as Server-Sent Events, like `POST /agent/stream`."""


class RunCreate(RunInput):
    """Body of `POST /agent`, `/agent/submit` and `/agent/stream`."""

    agent: AgentName
    session_id: uuid.UUID | None = None
    """Continue this session's conversation (its agent must be `agent`): the run is its next
    message, as with `POST /agent/sessions/{id}/messages` (409 while an earlier one runs)."""
    webhook_url: str | None = Field(default=None, max_length=2048)
    """Receives `run.completed`, `run.failed`, `run.cancelled` and `run.awaiting_approval`."""


class JobAccepted(BaseModel):
    """Answer of `POST /agent/submit`."""

    job_id: str
    status: Literal["pending"]
    status_url: str
    stream_url: str
    """The run's events over SSE; its token lets a browser's EventSource read them."""


class ApprovalRead(BaseModel):
    id: str
    job_id: str
    tool: str
    arguments: dict[str, object]
    status: str
    requested_at: datetime
    expires_at: datetime
    decided_at: datetime | None = None
    decided_by: str | None = None
    reason: str | None = None

    @classmethod
    def from_record(cls, a: ApprovalRecord, *, redactor: Redactor = FILTER_ALL) -> ApprovalRead:
        """The approval as users see it: its arguments through the output filter (all
        entities unless told otherwise; admins see them raw)."""
        arguments = a.approved_arguments if a.approved_arguments is not None else a.arguments
        shown = redactor.redact_json(arguments)
        assert isinstance(shown, dict)
        return cls(
            id=str(a.id),
            job_id=str(a.run_id),
            tool=a.tool,
            arguments=shown,
            status=a.status,
            requested_at=a.requested_at,
            expires_at=a.expires_at,
            decided_at=a.decided_at,
            decided_by=a.decided_by,
            reason=a.reason,
        )


class ApprovalDecisionBody(BaseModel):
    """Body of `POST /agent/approvals/{id}`."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "deny"]
    reason: str | None = Field(default=None, max_length=2000)
    arguments: dict[str, object] | None = None
    """Edited arguments to run the tool with (approve only); validated against its schema."""

    @model_validator(mode="after")
    def _arguments_only_with_approve(self) -> ApprovalDecisionBody:
        # A denied call runs nothing: arguments with it would be stored and shown unvalidated.
        if self.decision != "approve" and self.arguments is not None:
            raise PydanticCustomError(
                "arguments_without_approve", "arguments can only be given with approve"
            )
        return self


class ApprovalList(BaseModel):
    approvals: list[ApprovalRead]


class WebhookState(BaseModel):
    url: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: float
    llm_calls: int
    tool_calls: int


class RunError(BaseModel):
    type: str
    message: str


class RunResult(BaseModel):
    output: str


class RoutingRead(BaseModel):
    """How the agent's model policy chose the run's model."""

    tier: Literal["simple", "medium", "complex"]
    reason: str | None

    @classmethod
    def from_run(cls, run: RunRecord) -> RoutingRead | None:
        """None when no policy chose (the version's or the default model)."""
        if run.model_tier is None:
            return None
        return cls(tier=run.model_tier, reason=run.model_reason)  # type: ignore[arg-type]


class FeedbackRead(BaseModel):
    """A rating of a run by its owner; the comment as the output filter left it."""

    rating: Literal["up", "down"]
    comment: str | None = None
    tags: list[str] = []
    created_at: datetime


class RunRead(BaseModel):
    """The one answer shape of every pattern."""

    job_id: str
    agent: str
    agent_version: str
    model: str
    routing: RoutingRead | None = None
    """Set when the agent's model policy chose `model` by the task's complexity."""
    session_id: str | None
    status: RunStatus
    result: RunResult | None
    error: RunError | None
    usage: Usage
    turns: int
    pending_approvals: list[ApprovalRead]
    webhook: WebhookState | None
    stream_url: str | None = None
    """The run's events over SSE, with a short-lived token that grants reading them."""
    metadata: dict[str, MetadataValue]
    experiment: str | None = None
    """The A/B experiment this run took part in (its traffic policy's), if any."""
    variant: str | None = None
    """The experiment's variant that served this run."""
    feedback: FeedbackRead | None = None
    """The owner's current rating of the run (`POST /agent/runs/{job_id}/feedback`)."""
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_view(cls, view: RunView, *, stream_url: str | None = None) -> RunRead:
        run, delivery = view.run, view.webhook
        return cls(
            job_id=str(run.id),
            agent=run.agent,
            agent_version=run.agent_version,
            model=run.model,
            routing=RoutingRead.from_run(run),
            session_id=None if run.session_id is None else str(run.session_id),
            status=run.status,  # type: ignore[arg-type]
            result=RunResult.model_validate(run.result) if run.result else None,
            error=RunError.model_validate(run.error) if run.error else None,
            usage=Usage.model_validate(run.usage()),
            turns=run.turns,
            pending_approvals=[ApprovalRead.from_record(a) for a in view.approvals],
            webhook=_webhook_state(run.webhook_url, delivery),
            stream_url=stream_url,
            metadata=run.metadata,  # type: ignore[arg-type]
            experiment=run.experiment,
            variant=run.variant,
            feedback=None if run.feedback is None else FeedbackRead.model_validate(run.feedback),
            created_at=run.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
        )


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str


def _webhook_state(url: str | None, delivery: Delivery | None) -> WebhookState | None:
    if url is None:
        return None
    if delivery is None:
        # Nothing to announce yet: the run has not reached a state that is sent.
        return WebhookState(
            url=url,
            status="waiting",
            attempts=0,
            next_attempt_at=None,
            last_status_code=None,
            last_error=None,
        )
    return WebhookState(
        url=delivery.url,
        status=delivery.status,
        attempts=delivery.attempts,
        next_attempt_at=delivery.next_attempt_at,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
    )
