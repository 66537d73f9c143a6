"""The runner's plumbing: state, event numbering, commits and the end of a run."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import assert_never

from app.llm.types import LLMResponse, ModelClient
from app.runner.errors import RunTimeout
from app.runner.events import EventType, RunEvent
from app.runner.protocols import (
    ApprovalDecision,
    Cancelled,
    Completed,
    EventSink,
    Failed,
    LLMCallRecord,
    Outcome,
    Paused,
    RunStore,
    Step,
    Suspended,
)
from app.runner.spec import RunSpec, StopReason
from app.runner.state import Checkpoint
from app.tools.base import ToolContext, ToolRegistry

log = logging.getLogger(__name__)


class _Stop(Exception):
    def __init__(self, reason: StopReason) -> None:
        self.reason = reason


class RunnerBase:
    """State of one run in this process and the one way it is written: `_commit`."""

    def __init__(
        self,
        spec: RunSpec,
        *,
        model: ModelClient,
        tools: ToolRegistry,
        tool_context: ToolContext,
        store: RunStore,
        sink: EventSink | None = None,
        decisions: Mapping[str, ApprovalDecision] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`decisions` are the human decisions on this run's approvals, by tool-call key."""
        self._spec = spec
        self._model = model
        self._tools = tools
        self._ctx = tool_context
        self._store = store
        self._sink = sink
        self._decisions = dict(decisions or {})
        self._clock = clock
        self._deadline = 0.0
        self._resumed_at = 0.0
        self._elapsed_before = 0.0
        self._stop: StopReason | None = None
        self._inflight: asyncio.Future[LLMResponse] | None = None
        self._offer = tools.offer(spec.tools)

    def stop(self, reason: StopReason) -> None:
        """Stop at the next step boundary; a cancel also aborts an in-flight LLM call."""
        if self._stop != "cancel":
            self._stop = reason
        if reason == "cancel" and self._inflight is not None:
            self._inflight.cancel()

    def _check_stop(self) -> None:
        if self._stop is not None:
            raise _Stop(self._stop)

    def _remaining(self) -> float:
        return self._deadline - self._clock()

    def _timeout_failure(self) -> RunTimeout:
        return RunTimeout(f"the run exceeded its time limit of {self._spec.limits.timeout_s:g} s")

    def _event(
        self, cp: Checkpoint, type_: EventType, data: dict[str, object], *, filtered: bool = False
    ) -> RunEvent:
        """The next event, with everything in it a user could see filtered (deltas are
        filtered by the caller, across chunks; `filtered`: `data` already is)."""
        if type_ != EventType.LLM_DELTA and not filtered:
            clean = self._spec.redactor.redact_json(data)
            assert isinstance(clean, dict)
            data = clean
        event = RunEvent(self._spec.run_id, cp.next_seq, type_, data)
        cp.next_seq += 1
        return event

    async def _publish(self, events: list[RunEvent]) -> None:
        if self._sink is None or not events:
            return
        try:
            await self._sink.publish(events)
        except Exception:
            # The event log is durable; live delivery is best effort.
            log.warning("live publish failed for run %s", self._spec.run_id, exc_info=True)

    async def _commit(self, step: Step, *, published: int = 0) -> None:
        step.checkpoint.elapsed_s = self._elapsed_before + (self._clock() - self._resumed_at)
        if await self._store.commit(step):
            self.stop("cancel")
        await self._publish(list(step.events[published:]))

    async def _finish(
        self,
        cp: Checkpoint,
        outcome: Outcome,
        *,
        llm_call: LLMCallRecord | None = None,
        events: list[RunEvent] | None = None,
        published: int = 0,
    ) -> Outcome:
        events = list(events or [])
        usage = cp.usage.model_dump()
        redact = self._spec.redactor.redact
        match outcome:
            case Completed(output):
                outcome = Completed(redact(output))
            case Failed(error_type, message):
                outcome = Failed(error_type, redact(message))
            case _:
                pass
        match outcome:
            case Completed(output):
                # The output was filtered above, and usage holds numbers only.
                data: dict[str, object] = {"result": {"output": output}, "usage": usage}
                events.append(self._event(cp, EventType.RUN_COMPLETED, data, filtered=True))
            case Failed(error_type, message):
                data = {"error": {"type": error_type, "message": message}, "usage": usage}
                events.append(self._event(cp, EventType.RUN_FAILED, data, filtered=True))
            case Cancelled():
                events.append(self._event(cp, EventType.RUN_CANCELLED, {"usage": usage}))
            case Paused() | Suspended():
                pass
            case _:
                assert_never(outcome)
        step = Step(checkpoint=cp, events=events, llm_call=llm_call, outcome=outcome)
        await self._commit(step, published=published)
        return outcome
