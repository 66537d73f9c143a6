"""GuardedRunner: model call → guards → tool calls → repeat, until an answer or a limit.

Pure: it reaches the world only through a ModelClient, a RunStore, an optional
EventSink and the tools' ToolContext, so a unit test drives it with a scripted
model and an in-memory store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import assert_never

from pydantic import BaseModel

from app.guards.limits import RunLimits
from app.guards.tools import Allow, Reject, RequireApproval, check_tool_call
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
    Completed,
    EventSink,
    Failed,
    LLMCallRecord,
    Outcome,
    RunStore,
    Step,
    ToolCallRecord,
    ToolStatus,
)
from app.runner.state import Checkpoint
from app.tools.base import Tool, ToolContext, ToolFailure, ToolRegistry

log = logging.getLogger(__name__)

APPROVAL_UNAVAILABLE = (
    "tool {name} is high-risk and requires human approval before it runs; "
    "approval is not available for this run, so it was not run"
)
IN_DOUBT = (
    "the earlier call to {name} was interrupted; it may or may not have taken effect "
    "and was not repeated"
)


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
        deadline: float,
        sink: EventSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`deadline` is the `clock()` value by which the run must have ended."""
        self._spec = spec
        self._model = model
        self._tools = tools
        self._ctx = tool_context
        self._store = store
        self._sink = sink
        self._clock = clock
        self._deadline = deadline
        self._tool_specs = tuple(
            ToolSpec(name=t.name, description=t.description, parameters=t.json_schema())
            for name in sorted(spec.tools)
            if (t := tools.get(name)) is not None
        )

    async def run(self, cp: Checkpoint) -> Outcome:
        """Continue the run from `cp` until it completes or fails; return how it ended."""
        try:
            while True:
                self._spec.limits.check_deadline(self._remaining())
                pending = cp.unanswered_tool_calls()
                if pending:
                    for index, call in pending:
                        await self._tool_step(cp, index, call)
                    continue
                answer = cp.final_answer()
                if answer is not None:
                    return await self._finish(cp, Completed(answer))
                self._spec.limits.check_turns(cp.turn)
                outcome = await self._llm_step(cp)
                if outcome is not None:
                    return outcome
        except LeaseLost:
            raise
        except RunFailure as exc:
            return await self._finish(cp, Failed(exc.error_type, str(exc)))
        except Exception:
            log.exception("run %s crashed", self._spec.run_id)
            return await self._finish(cp, Failed("internal", "the run failed unexpectedly"))

    def _remaining(self) -> float:
        return self._deadline - self._clock()

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
        await self._store.commit(step)
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
                events.append(
                    self._event(
                        cp, EventType.RUN_COMPLETED, {"result": {"output": output}, "usage": usage}
                    )
                )
            case Failed(error_type, message):
                error = {"type": error_type, "message": message}
                events.append(
                    self._event(cp, EventType.RUN_FAILED, {"error": error, "usage": usage})
                )
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

    async def _llm_step(self, cp: Checkpoint) -> Outcome | None:
        """One model call, committed with its trace row; the outcome if the run ended."""
        request = self._request(cp)
        deltas: list[RunEvent] = []
        on_delta = self._delta_callback(cp, deltas) if self._spec.stream else None
        timeout = min(self._spec.limits.llm_timeout_s, self._remaining())
        started = self._clock()
        failure: RunFailure | None = None
        response: LLMResponse | None = None
        try:
            async with asyncio.timeout(timeout):
                response = await self._model.complete(request, on_delta=on_delta)
        except TimeoutError:
            if self._remaining() <= 0:
                failure = RunTimeout(
                    f"the run exceeded its time limit of {self._spec.limits.timeout_s:g} s"
                )
            else:
                failure = LLMUnavailable(
                    f"{request.provider}/{request.model} did not answer within {timeout:g} s"
                )
        except ProviderError as exc:
            failure = LLMUnavailable(
                f"{request.provider}/{request.model}: {type(exc).__name__}: {exc}"
            )
        latency_ms = (self._clock() - started) * 1000
        trace_request = request.model_dump(mode="json", exclude_none=True)
        if response is None:
            assert failure is not None
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
                error=str(failure),
            )
            outcome = Failed(failure.error_type, str(failure))
            return await self._finish(
                cp, outcome, llm_call=record, events=deltas, published=len(deltas)
            )
        cost = price_call(request.provider, request.model, response.usage)
        cp.messages.append(response.message)
        cp.turn += 1
        cp.usage.add_llm_call(response.usage, cost.usd)
        record = LLMCallRecord(
            turn=cp.turn,
            provider=request.provider,
            model=request.model,
            request=trace_request,
            response=response.model_dump(mode="json", exclude_none=True),
            usage=response.usage,
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
                "content": response.message.content,
                "tool_calls": [c.name for c in response.message.tool_calls],
                "usage": response.usage.model_dump(),
                "cost_usd": cost.usd,
                "latency_ms": round(latency_ms, 3),
                "finish_reason": response.finish_reason,
            },
        )
        events = [*deltas, call_event]
        if response.message.tool_calls:
            await self._commit(
                Step(checkpoint=cp, events=events, llm_call=record), published=len(deltas)
            )
            return None
        completed = Completed(response.message.content or "")
        return await self._finish(
            cp, completed, llm_call=record, events=events, published=len(deltas)
        )

    async def _tool_step(self, cp: Checkpoint, index: int, call: ToolCall) -> None:
        """Guard, record the intent, execute, and commit one tool call."""
        key = f"{self._spec.run_id}:{cp.turn}:{index}"
        call_event = self._event(
            cp,
            EventType.TOOL_CALL,
            {
                "call_id": call.id,
                "name": call.name,
                "arguments": call.arguments,
                "index": index,
            },
        )
        decision = check_tool_call(call, allowed=self._spec.tools, registry=self._tools)
        match decision:
            case Reject(verdict, message):
                await self._tool_done(cp, key, index, call, verdict, message, None, [call_event])
            case RequireApproval(tool, _):
                message = APPROVAL_UNAVAILABLE.format(name=tool.name)
                await self._tool_done(cp, key, index, call, "refused", message, None, [call_event])
            case Allow(tool, args):
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
                status, text, latency_ms = await self._execute(tool, args, key)
                await self._tool_done(cp, key, index, call, status, text, latency_ms, [])
            case _:
                assert_never(decision)

    async def _execute(
        self, tool: Tool, args: BaseModel, key: str
    ) -> tuple[ToolStatus, str, float]:
        timeout = min(tool.timeout_s, self._remaining())
        started = self._clock()
        status: ToolStatus = "ok"
        try:
            async with asyncio.timeout(timeout):
                text = await tool.fn(args, replace(self._ctx, idempotency_key=key))
        except ToolFailure as exc:
            status, text = "error", str(exc)
        except TimeoutError:
            if self._remaining() <= 0:
                raise RunTimeout(
                    f"the run exceeded its time limit of {self._spec.limits.timeout_s:g} s"
                ) from None
            status, text = "error", f"{tool.name} timed out after {timeout:g} s"
        except Exception as exc:
            log.exception("tool %s crashed", tool.name)
            status, text = "error", f"{tool.name} failed unexpectedly ({type(exc).__name__})"
        if len(text) > tool.max_result_chars:
            text = text[: tool.max_result_chars] + "\n[truncated]"
        return status, text, (self._clock() - started) * 1000

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
