"""GuardedRunner: model call → guards → tool calls → repeat, until an answer or a limit.

Pure: it reaches the world only through a ModelClient, a RunStore, an optional
EventSink and the tools' ToolContext, so a unit test drives it with a scripted
model and an in-memory store.
"""

from __future__ import annotations

import asyncio

from app.guards.budget import BudgetError, worst_case
from app.guards.redact import StreamRedactor
from app.llm.errors import ProviderError
from app.llm.pricing import price_call
from app.llm.types import DeltaCallback, LLMRequest, LLMResponse, TokenUsage
from app.observability.metrics import BUDGET_REJECTIONS
from app.runner.base import _Stop, log
from app.runner.errors import LeaseLost, LLMUnavailable, RunFailure, StoreUnavailable
from app.runner.events import EventType, RunEvent
from app.runner.protocols import (
    Cancelled,
    Completed,
    Failed,
    LLMCallRecord,
    Outcome,
    Step,
    Suspended,
)
from app.runner.spec import RunSpec, StopReason, start_run
from app.runner.state import Checkpoint
from app.runner.tool_steps import ToolSteps

__all__ = ["GuardedRunner", "RunSpec", "StopReason", "start_run"]


class GuardedRunner(ToolSteps):
    """Drives one run from a checkpoint to its end, committing after every call."""

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
        except (LeaseLost, StoreUnavailable):
            raise
        except RunFailure as exc:
            return await self._finish(cp, Failed(exc.error_type, str(exc)))
        except Exception:
            log.exception("run %s crashed", self._spec.run_id)
            return await self._finish(cp, Failed("internal", "the run failed unexpectedly"))

    def _request(self, cp: Checkpoint) -> LLMRequest:
        spec = self._spec
        return LLMRequest(
            provider=spec.provider,
            model=spec.model,
            messages=tuple(cp.messages),
            tools=self._offer.specs,
            tool_choice="auto" if self._offer.specs else None,
            temperature=spec.temperature,
            max_output_tokens=spec.max_output_tokens,
        )

    def _trace_request(self, request: LLMRequest) -> dict[str, object]:
        """`request` as its trace row keeps it (JSON), its tools dumped once per set."""
        trace = request.model_dump(mode="json", exclude_none=True, exclude={"tools"})
        if request.tools:
            trace["tools"] = list(self._offer.trace)
        return trace

    def _delta_callback(
        self, cp: Checkpoint, deltas: list[RunEvent], redactor: StreamRedactor
    ) -> DeltaCallback:
        """Publishes the model's text as it comes, filtered: the redactor holds back a
        tail that could still become a secret until later text settles it."""

        async def on_delta(text: str) -> None:
            safe = redactor.feed(text)
            if safe:
                event = self._event(cp, EventType.LLM_DELTA, {"text": safe})
                deltas.append(event)
                await self._publish([event])

        return on_delta

    async def _flush_deltas(
        self, cp: Checkpoint, deltas: list[RunEvent], redactor: StreamRedactor | None
    ) -> None:
        tail = redactor.flush() if redactor is not None else ""
        if tail:
            event = self._event(cp, EventType.LLM_DELTA, {"text": tail})
            deltas.append(event)
            await self._publish([event])

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
        except RunFailure as exc:
            # From the guards around the call: budget, breakers, an exhausted fallback chain.
            return exc
        finally:
            self._inflight = None

    def _check_spend(self, cp: Checkpoint, request: LLMRequest) -> None:
        """The run's token and cost caps, against the next call's worst case."""
        limits = self._spec.limits
        if limits.max_run_tokens is None and limits.max_run_cost_usd is None:
            return
        worst = worst_case(request)
        costs = [worst.cost_usd(request.provider, request.model)]
        for ref in self._spec.fallback_models:
            provider, _, model = ref.partition("/")
            costs.append(worst.cost_usd(provider, model))
        try:
            limits.check_spend(
                tokens=cp.usage.input_tokens + cp.usage.output_tokens,
                cost_usd=cp.usage.cost_usd,
                next_call=worst,
                next_cost_usd=max(costs),
            )
        except BudgetError as exc:
            BUDGET_REJECTIONS.labels(reason=exc.reason).inc()
            raise

    async def _llm_step(self, cp: Checkpoint) -> Outcome | None:
        """One model call, committed with its trace row; the outcome if the run ended."""
        request = self._request(cp)
        self._check_spend(cp, request)
        deltas: list[RunEvent] = []
        redactor = self._spec.redactor.stream() if self._spec.stream else None
        on_delta = None if redactor is None else self._delta_callback(cp, deltas, redactor)
        started = self._clock()
        answer = await self._call_model(request, on_delta)
        latency_ms = (self._clock() - started) * 1000
        await self._flush_deltas(cp, deltas, redactor)
        trace_request = self._trace_request(request)
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
        provider, model = request.provider, request.model
        if answer.served_by is not None:
            provider, _, model = answer.served_by.partition("/")
        cost = price_call(provider, model, answer.usage)
        usd = 0.0 if answer.cache_hit else cost.usd
        cp.messages.append(answer.message)
        cp.turn += 1
        cp.usage.add_llm_call(answer.usage, usd)
        record = LLMCallRecord(
            turn=cp.turn,
            provider=provider,
            model=model,
            request=trace_request,
            response=answer.model_dump(mode="json", exclude_none=True),
            usage=answer.usage,
            cost_usd=usd,
            priced=cost.priced,
            latency_ms=latency_ms,
            cache_hit=answer.cache_hit,
        )
        call_event = self._event(
            cp,
            EventType.LLM_CALL,
            {
                "turn": cp.turn,
                "provider": provider,
                "model": model,
                "cache_hit": answer.cache_hit,
                "content": answer.message.content,
                "tool_calls": [c.name for c in answer.message.tool_calls],
                "usage": answer.usage.model_dump(),
                "cost_usd": usd,
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
