"""What a run is to the runner: its spec, its first checkpoint, how it may be stopped."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from app.guards.limits import RunLimits
from app.guards.redact import Redactor
from app.llm.types import Message
from app.runner.events import EventType, RunEvent
from app.runner.shadow import ShadowReplay
from app.runner.state import Checkpoint

StopReason = Literal["cancel", "suspend"]


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """What to run: the resolved agent version and the run's own limits."""

    run_id: str
    agent: str = ""
    agent_version: str = ""
    provider: str
    model: str
    fallback_models: tuple[str, ...] = ()
    """The other `provider/model`s that may answer a call (the fallback chain's): the run's
    cost cap holds at the dearest of them."""
    tools: frozenset[str]
    limits: RunLimits
    temperature: float | None = None
    max_output_tokens: int | None = None
    stream: bool = False
    """Ask the provider to stream and emit `llm.delta` events."""
    redactor: Redactor = Redactor()
    """Filters what users see of the run (events, output, errors); the trace keeps the raw."""
    shadow: ShadowReplay | None = None
    """Set for a shadow run: only read-only tools execute, others are answered from this."""


def start_run(
    *,
    run_id: str,
    instructions: str,
    user_input: str,
    data: dict[str, object],
    history: Sequence[Message] = (),
) -> tuple[Checkpoint, RunEvent]:
    """The first checkpoint of a fresh run and its `run.started` event: the instructions,
    the prior conversation `history` (a session's; no system messages), the user's input."""
    messages = [*history, Message(role="user", content=user_input)]
    if instructions:
        messages.insert(0, Message(role="system", content=instructions))
    event = RunEvent(run_id, 0, EventType.RUN_STARTED, data)
    return Checkpoint(messages=messages, next_seq=1), event
