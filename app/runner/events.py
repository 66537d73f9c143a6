"""RunEvent: one entry of a run's ordered event stream."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class EventType(StrEnum):
    RUN_STARTED = "run.started"
    LLM_DELTA = "llm.delta"
    LLM_CALL = "llm.call"
    TOOL_CALL = "tool.call"
    TOOL_RESULT = "tool.result"
    APPROVAL_REQUIRED = "approval.required"
    APPROVAL_RESOLVED = "approval.resolved"
    RUN_COMPLETED = "run.completed"
    RUN_FAILED = "run.failed"
    RUN_CANCELLED = "run.cancelled"


TERMINAL_EVENTS = frozenset(
    {EventType.RUN_COMPLETED, EventType.RUN_FAILED, EventType.RUN_CANCELLED}
)


@dataclass(frozen=True, slots=True)
class RunEvent:
    """An event with its per-run sequence number (strictly increasing from 0)."""

    run_id: str
    seq: int
    type: EventType
    data: dict[str, object]

    def payload(self) -> dict[str, object]:
        """The JSON a client receives: at least `job_id`, `seq` and `type`."""
        return {"job_id": self.run_id, "seq": self.seq, "type": self.type.value, **self.data}
