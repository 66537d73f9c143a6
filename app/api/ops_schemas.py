"""Bodies of the trace and catalogue routes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from app.agents.policy import TrafficPolicy
from app.api.schemas import FeedbackRead, RoutingRead


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
    routing: RoutingRead | None = None
    """How the run's model was chosen, when the agent's model policy chose it."""
    llm_calls: list[LLMCallRead]
    tool_calls: list[ToolCallRead]
    feedback: list[FeedbackRead] = []
    """The owner's ratings of the run, oldest first (the last is current); comments through
    the output filter, except for admins."""


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
    redact: list[str]
    """Entities the output filter removes from what users see of its runs."""
    max_run_tokens: int | None = None
    """The per-run token cap that applies (the agent's or the service's, the lower)."""
    max_run_cost_usd: float | None = None
    """The per-run cost cap that applies (the agent's or the service's, the lower)."""


class AgentRead(BaseModel):
    name: str
    description: str
    stable: str
    """The version the agent declares stable (its traffic policy may name another)."""
    policy: TrafficPolicy
    """Its traffic policy in force: stable, canary, A/B experiment, shadow."""
    versions: list[AgentVersionRead]
    tools: list[ToolRead]


class AgentCatalog(BaseModel):
    agents: list[AgentRead]
