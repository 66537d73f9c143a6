"""Request and response bodies of the HTTP contract."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.store.runs import RunRecord

RunStatus = Literal["pending", "running", "awaiting_approval", "completed", "failed", "cancelled"]
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
MetadataValue = str | int | float | bool | None


class RunCreate(BaseModel):
    """Body of `POST /agent`."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(min_length=1, max_length=128, examples=["assistant"])
    input: str = Field(min_length=1, max_length=200_000, examples=["What is 17*23?"])
    metadata: dict[str, MetadataValue] = Field(default_factory=dict, max_length=64)
    max_turns: int | None = Field(default=None, ge=1, le=100)
    """Lower the agent's turn limit for this run (never raise it)."""
    timeout_s: float | None = Field(default=None, gt=0, le=86_400)
    """Lower the agent's time limit for this run (never raise it)."""


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


class RunRead(BaseModel):
    """The one answer shape of every pattern."""

    job_id: str
    agent: str
    agent_version: str
    model: str
    status: RunStatus
    result: RunResult | None
    error: RunError | None
    usage: Usage
    turns: int
    metadata: dict[str, MetadataValue]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_record(cls, run: RunRecord) -> RunRead:
        return cls(
            job_id=str(run.id),
            agent=run.agent,
            agent_version=run.agent_version,
            model=run.model,
            status=run.status,  # type: ignore[arg-type]
            result=RunResult.model_validate(run.result) if run.result else None,
            error=RunError.model_validate(run.error) if run.error else None,
            usage=Usage(
                input_tokens=run.input_tokens,
                output_tokens=run.output_tokens,
                cached_tokens=run.cached_tokens,
                cost_usd=run.cost_usd,
                llm_calls=run.llm_calls,
                tool_calls=run.tool_calls,
            ),
            turns=run.turns,
            metadata=run.metadata,  # type: ignore[arg-type]
            created_at=run.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
        )


class LLMCallRead(BaseModel):
    turn: int
    provider: str
    model: str
    request: dict[str, object]
    response: dict[str, object] | None
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: float
    priced: bool
    """False when the model is not in the price table (its cost shows as 0)."""
    latency_ms: float
    error: str | None
    cache_hit: bool
    created_at: datetime


class ToolCallRead(BaseModel):
    turn: int
    call_index: int
    call_id: str
    name: str
    arguments: dict[str, object]
    status: str
    result: str | None
    latency_ms: float | None
    idempotency_key: str
    created_at: datetime
    finished_at: datetime | None


class TraceRead(BaseModel):
    job_id: str
    llm_calls: list[LLMCallRead]
    tool_calls: list[ToolCallRead]


class ToolRead(BaseModel):
    name: str
    description: str
    risk: str
    idempotent: bool
    read_only: bool
    timeout_s: float
    parameters: dict[str, object]


class AgentVersionRead(BaseModel):
    version: str
    model: str
    tools: list[str]
    max_turns: int
    timeout_s: float
    temperature: float | None
    max_output_tokens: int | None


class AgentRead(BaseModel):
    name: str
    description: str
    stable: str
    versions: list[AgentVersionRead]
    tools: list[ToolRead]


class AgentCatalog(BaseModel):
    agents: list[AgentRead]


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
