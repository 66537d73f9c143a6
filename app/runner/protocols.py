"""What the runner needs from the outside world, as small protocols and records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from app.llm.types import JsonObject, TokenUsage
from app.runner.events import RunEvent
from app.runner.state import Checkpoint

ToolStatus = Literal[
    "started", "ok", "refused", "invalid", "error", "in_doubt", "replayed", "simulated"
]
"""`replayed` and `simulated`: a shadow run's call answered without executing it
(app/runner/shadow.py)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class LLMCallRecord:
    """The trace of one LLM call: prompt, response, tokens, cost."""

    turn: int
    provider: str
    model: str
    request: JsonObject
    response: JsonObject | None
    usage: TokenUsage
    cost_usd: float
    priced: bool
    latency_ms: float
    error: str | None = None
    cache_hit: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCallRecord:
    """The trace of one tool call: name, arguments, result, latency."""

    key: str
    """Idempotency key `run:turn:index`."""
    turn: int
    index: int
    call_id: str
    name: str
    arguments: JsonObject
    status: ToolStatus
    result: str | None = None
    latency_ms: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ApprovalRequest:
    """A high-risk call that waits for a human decision."""

    id: str
    key: str
    call_id: str
    tool: str
    arguments: JsonObject


@dataclass(frozen=True, kw_only=True, slots=True)
class ApprovalDecision:
    """What a human (or the expiry) decided about an ApprovalRequest."""

    status: Literal["approved", "denied", "expired"]
    arguments: JsonObject | None = None
    """The arguments to run with when approved (possibly edited by the approver)."""
    reason: str | None = None
    decided_by: str | None = None


@dataclass(frozen=True, slots=True)
class Completed:
    output: str


@dataclass(frozen=True, slots=True)
class Failed:
    error_type: str
    message: str


@dataclass(frozen=True, slots=True)
class Cancelled:
    """Stopped on request at a step boundary."""


@dataclass(frozen=True, slots=True)
class Paused:
    """Waiting for an approval; no worker holds the run meanwhile."""

    approval: ApprovalRequest


@dataclass(frozen=True, slots=True)
class Suspended:
    """Handed back to the queue (the worker is shutting down); another worker resumes it."""


Outcome = Completed | Failed | Cancelled | Paused | Suspended
TERMINAL_OUTCOMES = (Completed, Failed, Cancelled)


@dataclass(frozen=True, kw_only=True, slots=True)
class Step:
    """One atomic commit: the checkpoint, the call's trace row, its events, maybe the end."""

    checkpoint: Checkpoint
    events: Sequence[RunEvent]
    llm_call: LLMCallRecord | None = None
    tool_call: ToolCallRecord | None = None
    outcome: Outcome | None = None


class RunStore(Protocol):
    """Durable state of one run, written only by the worker that holds its lease."""

    async def commit(self, step: Step) -> bool:
        """Persist the step atomically; raise LeaseLost if the run is no longer ours,
        StoreUnavailable if the store cannot be reached. Return True when someone asked
        to cancel the run."""
        ...

    async def begin_tool_call(
        self, intent: ToolCallRecord, checkpoint: Checkpoint, events: Sequence[RunEvent]
    ) -> ToolCallRecord | None:
        """Record the intent (and the checkpoint's advanced event sequence) before the tool
        runs. Return the earlier record when the key was already written (the run is
        resuming), else None."""
        ...


class EventSink(Protocol):
    """Live delivery of events that are already durable (or, for deltas, about to be)."""

    async def publish(self, events: Sequence[RunEvent]) -> None: ...
