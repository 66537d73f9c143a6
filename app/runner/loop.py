"""GuardedRunner: model call → guards → tool calls → repeat, until an answer or a limit.

Pure: it reaches the world only through a ModelClient, a RunStore, an optional
EventSink and the tools' ToolContext, so a unit test drives it with a scripted
model and an in-memory store.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Literal, assert_never

from pydantic import ValidationError

from app.guards.limits import RunLimits
from app.guards.tools import Allow, Reject, RequireApproval, check_tool_call, describe_errors
from app.llm.errors import ProviderError
from app.llm.pricing import price_call
from app.llm.types import (
    DeltaCallback,
    LLMRequest,
    LLMResponse,
    Message,
    ModelClient,
    TokenUsage,
    ToolCall,
    ToolSpec,
)
from app.runner.errors import LeaseLost, LLMUnavailable, RunFailure, RunTimeout
from app.runner.events import EventType, RunEvent
from app.runner.protocols import (
    ApprovalDecision,
    ApprovalRequest,
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
    ToolCallRecord,
    ToolStatus,
)
from app.runner.state import Checkpoint
from app.runner.tool_exec import DENIED, EXPIRED, IN_DOUBT, execute_tool
from app.tools.base import Tool, ToolContext, ToolRegistry

log = logging.getLogger(__name__)

StopReason = Literal["cancel", "suspend"]


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """What to run: the resolved agent version and the run's own limits."""

    run_id: str
    provider: str
    model: str
    tools: frozenset[str]
    limits: RunLimits
    temperature: float | None = None
    max_output_tokens: int | None = None
    stream: bool = False
    """Ask the provider to stream and emit `llm.delta` events."""


def start_run(
    *, run_id: str, instructions: str, user_input: str, data: dict[str, object]
) -> tuple[Checkpoint, RunEvent]:
    """The first checkpoint of a fresh run and its `run.started` event."""
    messages = [Message(role="user", content=user_input)]
    if instructions:
        messages.insert(0, Message(role="system", content=instructions))
    event = RunEvent(run_id, 0, EventType.RUN_STARTED, data)
    return Checkpoint(messages=messages, next_seq=1), event


class _Stop(Exception):
    def __init__(self, reason: StopReason) -> None:
        self.reason = reason


class GuardedRunner:
    """Drives one run from a checkpoint to its end, committing after every call."""

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
        self._tool_specs = tuple(
            ToolSpec(name=t.name, description=t.description, parameters=t.json_schema())
            for name in sorted(spec.tools)
            if (t := tools.get(name)) is not None
        )

    def stop(self, reason: StopReason) -> None:
        """Stop at the next step boundary; a cancel also aborts an in-flight LLM call."""
        if self._stop != "cancel":
            self._stop = reason
        if reason == "cancel" and self._inflight is not None:
            self._inflight.cancel()

    async def run(self, cp: Checkpoint) -> Outcome:
        """Continue the run from `cp` until it ends, pauses for approval, or is stopped."""
        self._resumed_at = self._clock()
        self._elapsed_before = cp.elapsed_s
        self._deadline = self._resumed_at + self._spec.limits.timeout_s - cp.elapsed_s
        try:
            while True:
                self._check_stop()
                self._spec.limits.check_deadline(self._remaining())
                pending = cp.unanswered_tool_calls()
                if pending:
                    for index, call in pending:
                        paused = await self._tool_step(cp, index, call)
                        if paused is not None:
                            return paused
                        self._check_stop()
                    continue
                answer = cp.final_answer()
                if answer is not None:
                    return await self._finish(cp, Completed(answer))
                self._spec.limits.check_turns(cp.turn)
                outcome = await self._llm_step(cp)
                if outcome is not None:
                    return outcome
        except _Stop as stop:
            return await self._finish(cp, Cancelled() if stop.reason == "cancel" else Suspended())
        except LeaseLost:
            raise
        except RunFailure as exc:
            return await self._finish(cp, Failed(exc.error_type, str(exc)))
        except Exception:
            log.exception("run %s crashed", self._spec.run_id)
            return await self._finish(cp, Failed("internal", "the run failed unexpectedly"))

    def _check_stop(self) -> None:
        if self._stop is not None:
            raise _Stop(self._stop)

    def _remaining(self) -> float:
        return self._deadline - self._clock()

    def _timeout_failure(self) -> RunTimeout:
        return RunTimeout(f"the run exceeded its time limit of {self._spec.limits.timeout_s:g} s")

    def _event(self, cp: Checkpoint, type_: EventType, data: dict[str, object]) -> RunEvent:
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
        match outcome:
            case Completed(output):
                data: dict[str, object] = {"result": {"output": output}, "usage": usage}
                events.append(self._event(cp, EventType.RUN_COMPLETED, data))
            case Failed(error_type, message):
                data = {"error": {"type": error_type, "message": message}, "usage": usage}
                events.append(self._event(cp, EventType.RUN_FAILED, data))
            case Cancelled():
                events.append(self._event(cp, EventType.RUN_CANCELLED, {"usage": usage}))
            case Paused() | Suspended():
                pass
            case _:
                assert_never(outcome)
        step = Step(checkpoint=cp, events=events, llm_call=llm_call, outcome=outcome)
        await self._commit(step, published=published)
        return outcome

    def _request(self, cp: Checkpoint) -> LLMRequest:
        spec = self._spec
        return LLMRequest(
            provider=spec.provider,
            model=spec.model,
            messages=tuple(cp.messages),
            tools=self._tool_specs,
            tool_choice="auto" if self._tool_specs else None,
            temperature=spec.temperature,
            max_output_tokens=spec.max_output_tokens,
        )

    def _delta_callback(self, cp: Checkpoint, deltas: list[RunEvent]) -> DeltaCallback:
        async def on_delta(text: str) -> None:
            event = self._event(cp, EventType.LLM_DELTA, {"text": text})
            deltas.append(event)
            await self._publish([event])

        return on_delta

    async def _call_model(
        self, request: LLMRequest, on_delta: DeltaCallback | None
    ) -> LLMResponse | RunFailure:
        """The model's answer, or why there is none. A cancel aborts the call."""
        timeout = min(self._spec.limits.llm_timeout_s, self._remaining())
        call = asyncio.ensure_future(self._model.complete(request, on_delta=on_delta))
        self._inflight = call
        try:
            async with asyncio.timeout(timeout):
                return await call
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._stop == "cancel" and task is not None and not task.cancelling():
                return RunFailure("the call was aborted because the run was cancelled")
            raise
        except TimeoutError:
            if self._remaining() <= 0:
                return self._timeout_failure()
            return LLMUnavailable(
                f"{request.provider}/{request.model} did not answer within {timeout:g} s"
            )
        except ProviderError as exc:
            name = type(exc).__name__
            return LLMUnavailable(f"{request.provider}/{request.model}: {name}: {exc}")
        finally:
            self._inflight = None

    async def _llm_step(self, cp: Checkpoint) -> Outcome | None:
        """One model call, committed with its trace row; the outcome if the run ended."""
        request = self._request(cp)
        deltas: list[RunEvent] = []
        on_delta = self._delta_callback(cp, deltas) if self._spec.stream else None
        started = self._clock()
        answer = await self._call_model(request, on_delta)
        latency_ms = (self._clock() - started) * 1000
        trace_request = request.model_dump(mode="json", exclude_none=True)
        if not isinstance(answer, LLMResponse):
            cp.usage.llm_calls += 1
            record = LLMCallRecord(
                turn=cp.turn + 1,
                provider=request.provider,
                model=request.model,
                request=trace_request,
                response=None,
                usage=TokenUsage(),
                cost_usd=0.0,
                priced=True,
                latency_ms=latency_ms,
                error=str(answer),
            )
            ending: Outcome = (
                Cancelled() if self._stop == "cancel" else Failed(answer.error_type, str(answer))
            )
            return await self._finish(
                cp, ending, llm_call=record, events=deltas, published=len(deltas)
            )
        cost = price_call(request.provider, request.model, answer.usage)
        cp.messages.append(answer.message)
        cp.turn += 1
        cp.usage.add_llm_call(answer.usage, cost.usd)
        record = LLMCallRecord(
            turn=cp.turn,
            provider=request.provider,
            model=request.model,
            request=trace_request,
            response=answer.model_dump(mode="json", exclude_none=True),
            usage=answer.usage,
            cost_usd=cost.usd,
            priced=cost.priced,
            latency_ms=latency_ms,
        )
        call_event = self._event(
            cp,
            EventType.LLM_CALL,
            {
                "turn": cp.turn,
                "provider": request.provider,
                "model": request.model,
                "content": answer.message.content,
                "tool_calls": [c.name for c in answer.message.tool_calls],
                "usage": answer.usage.model_dump(),
                "cost_usd": cost.usd,
                "latency_ms": round(latency_ms, 3),
                "finish_reason": answer.finish_reason,
            },
        )
        events = [*deltas, call_event]
        if answer.message.tool_calls:
            step = Step(checkpoint=cp, events=events, llm_call=record)
            await self._commit(step, published=len(deltas))
            return None
        completed = Completed(answer.message.content or "")
        return await self._finish(
            cp, completed, llm_call=record, events=events, published=len(deltas)
        )

    async def _tool_step(self, cp: Checkpoint, index: int, call: ToolCall) -> Paused | None:
        """Guard, record the intent, execute and commit one tool call; Paused if it needs
        a human decision first."""
        key = f"{self._spec.run_id}:{cp.turn}:{index}"
        call_data: dict[str, object] = {
            "call_id": call.id,
            "name": call.name,
            "arguments": call.arguments,
            "index": index,
        }
        call_event = self._event(cp, EventType.TOOL_CALL, call_data)
        decision = check_tool_call(call, allowed=self._spec.tools, registry=self._tools)
        match decision:
            case Reject(verdict, message):
                await self._tool_done(cp, key, index, call, verdict, message, None, [call_event])
            case Allow(tool, args):
                await self._run_tool(
                    cp, key, index, call, tool, args.model_dump(mode="json"), call_event
                )
            case RequireApproval(tool, args):
                decided = self._decisions.get(key)
                if decided is None:
                    request = ApprovalRequest(
                        id=str(uuid.uuid4()),
                        key=key,
                        call_id=call.id,
                        tool=tool.name,
                        arguments=args.model_dump(mode="json"),
                    )
                    asked = self._event(
                        cp,
                        EventType.APPROVAL_REQUIRED,
                        {
                            "approval_id": request.id,
                            "name": tool.name,
                            "arguments": request.arguments,
                        },
                    )
                    paused = Paused(request)
                    await self._finish(cp, paused, events=[call_event, asked])
                    return paused
                if decided.status == "approved":
                    arguments = (
                        decided.arguments if decided.arguments is not None else call.arguments
                    )
                    await self._run_tool(cp, key, index, call, tool, arguments, call_event)
                else:
                    reason = f": {decided.reason}" if decided.reason else ""
                    template = DENIED if decided.status == "denied" else EXPIRED
                    message = template.format(name=tool.name, reason=reason)
                    await self._tool_done(
                        cp, key, index, call, "refused", message, None, [call_event]
                    )
            case _:
                assert_never(decision)
        return None

    async def _run_tool(
        self,
        cp: Checkpoint,
        key: str,
        index: int,
        call: ToolCall,
        tool: Tool,
        arguments: dict[str, object],
        call_event: RunEvent,
    ) -> None:
        try:
            args = tool.args_model.model_validate(arguments)
        except ValidationError as exc:
            message = f"invalid arguments for {tool.name}: {describe_errors(exc)}"
            await self._tool_done(cp, key, index, call, "invalid", message, None, [call_event])
            return
        intent = ToolCallRecord(
            key=key,
            turn=cp.turn,
            index=index,
            call_id=call.id,
            name=call.name,
            arguments=args.model_dump(mode="json"),
            status="started",
        )
        prior = await self._store.begin_tool_call(intent, cp, [call_event])
        await self._publish([call_event])
        if prior is not None and not tool.idempotent:
            message = IN_DOUBT.format(name=tool.name)
            await self._tool_done(cp, key, index, call, "in_doubt", message, None, [])
            return
        remaining = self._remaining()
        result = await execute_tool(
            tool,
            args,
            replace(self._ctx, idempotency_key=key),
            timeout_s=min(tool.timeout_s, remaining),
            run_timeout=remaining < tool.timeout_s,
        )
        if result.hit_deadline:
            raise self._timeout_failure()
        await self._tool_done(
            cp, key, index, call, result.status, result.text, result.latency_ms, []
        )

    async def _tool_done(
        self,
        cp: Checkpoint,
        key: str,
        index: int,
        call: ToolCall,
        status: ToolStatus,
        text: str,
        latency_ms: float | None,
        events: list[RunEvent],
    ) -> None:
        content = text if status == "ok" else f"error: {text}"
        cp.messages.append(
            Message(role="tool", content=content, tool_call_id=call.id, name=call.name)
        )
        cp.usage.tool_calls += 1
        record = ToolCallRecord(
            key=key,
            turn=cp.turn,
            index=index,
            call_id=call.id,
            name=call.name,
            arguments=call.arguments,
            status=status,
            result=text,
            latency_ms=latency_ms,
        )
        result_event = self._event(
            cp,
            EventType.TOOL_RESULT,
            {
                "call_id": call.id,
                "name": call.name,
                "status": status,
                "result": text,
                "latency_ms": None if latency_ms is None else round(latency_ms, 3),
            },
        )
        await self._commit(Step(checkpoint=cp, events=[*events, result_event], tool_call=record))
