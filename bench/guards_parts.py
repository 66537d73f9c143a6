"""The pieces of per-call work the guards and the runner add, timed one at a time: the
cache key, the budget's worst-case estimate, one Redis round trip, the metrics recorded at
commit (`observe_step`) and the output filter on an `llm.call` event."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from app.guards.budget import worst_case
from app.guards.redact import Redactor
from app.llm.cache import CacheScope
from app.llm.pricing import price_call
from app.llm.types import LLMRequest, LLMResponse
from app.observability.recording import observe_run_end, observe_step
from app.runner.events import EventType, RunEvent
from app.runner.protocols import Completed, LLMCallRecord, Step
from app.runner.state import Checkpoint
from app.store.runs import RunRecord
from bench.guards_calls import Samples
from bench.redact_bench import build_corpus

LONG_ANSWER_CHARS = 2000


@dataclass(frozen=True, kw_only=True)
class Part:
    """One piece of work and its per-call times."""

    name: str
    samples: Samples


def time_sync(fn: Callable[[], object], calls: int) -> Samples:
    """`fn()` `calls` times after a tenth as many warm-up calls, each call timed."""
    for _ in range(max(calls // 10, 1)):
        fn()
    samples = Samples()
    for _ in range(calls):
        cpu0 = time.thread_time_ns()
        wall0 = time.perf_counter_ns()
        fn()
        wall1 = time.perf_counter_ns()
        samples.cpu_ns.append(time.thread_time_ns() - cpu0)
        samples.wall_ns.append(wall1 - wall0)
    return samples


async def time_async(fn: Callable[[], Awaitable[object]], calls: int) -> Samples:
    """`await fn()` `calls` times after a tenth as many warm-up calls, each call timed."""
    for _ in range(max(calls // 10, 1)):
        await fn()
    samples = Samples()
    for _ in range(calls):
        cpu0 = time.thread_time_ns()
        wall0 = time.perf_counter_ns()
        await fn()
        wall1 = time.perf_counter_ns()
        samples.cpu_ns.append(time.thread_time_ns() - cpu0)
        samples.wall_ns.append(wall1 - wall0)
    return samples


def call_event_data(answer: LLMResponse, *, content: str | None = None) -> dict[str, object]:
    """The `llm.call` event's data as `GuardedRunner._llm_step` builds it (latency made up)."""
    return {
        "turn": 1,
        "provider": "local",
        "model": answer.model,
        "cache_hit": answer.cache_hit,
        "content": answer.message.content if content is None else content,
        "tool_calls": [c.name for c in answer.message.tool_calls],
        "usage": answer.usage.model_dump(),
        "cost_usd": 0.0,
        "latency_ms": 0.123,
        "finish_reason": answer.finish_reason,
    }


def llm_step(request: LLMRequest, answer: LLMResponse) -> Step:
    """A committed first LLM step that ends the run, as the runner hands it to the store."""
    record = LLMCallRecord(
        turn=1,
        provider=request.provider,
        model=request.model,
        request=request.model_dump(mode="json", exclude_none=True),
        response=answer.model_dump(mode="json", exclude_none=True),
        usage=answer.usage,
        cost_usd=0.0,
        priced=True,
        latency_ms=0.123,
    )
    checkpoint = Checkpoint(messages=[*request.messages, answer.message], turn=1, next_seq=3)
    run_id = str(uuid.uuid4())
    events = [RunEvent(run_id, 1, EventType.LLM_CALL, call_event_data(answer))]
    return Step(
        checkpoint=checkpoint,
        events=events,
        llm_call=record,
        outcome=Completed(answer.message.content or ""),
    )


def ended_run(step: Step) -> RunRecord:
    """The run `step` completed, as the store's final write returns it (no session)."""
    now = datetime.now(UTC)
    usage = step.checkpoint.usage
    return RunRecord(
        id=uuid.uuid4(),
        user_id="bench-user",
        agent="assistant",
        agent_version="1",
        model="local/local-1",
        pattern="sync",
        status="completed",
        input="Say hello in one short sentence.",
        metadata={},
        max_turns=8,
        timeout_s=120.0,
        result={"output": "hello"},
        error=None,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_tokens=0,
        cost_usd=0.0,
        llm_calls=1,
        tool_calls=0,
        turns=1,
        checkpoint=None,
        lease_owner=None,
        attempt=1,
        crashes=0,
        event_seq=3,
        cancel_requested=False,
        webhook_url=None,
        created_at=now - timedelta(milliseconds=5),
        started_at=now - timedelta(milliseconds=4),
        finished_at=now,
        session_id=None,
        history_len=0,
        model_tier=None,
        model_reason=None,
    )


def cpu_parts(
    request: LLMRequest,
    answer: LLMResponse,
    *,
    scope: CacheScope,
    redactor: Redactor,
    tools: frozenset[str],
    calls: int,
) -> list[Part]:
    """The in-process pieces, on the benchmark's request and the model's answer."""
    step = llm_step(request, answer)
    run = ended_run(step)
    short = call_event_data(answer)
    long = call_event_data(answer, content=build_corpus(LONG_ANSWER_CHARS)[:LONG_ANSWER_CHARS])
    usage = answer.usage
    chars = len(answer.message.content or "")
    return [
        Part(
            name="cache key: `CacheScope.key`", samples=time_sync(lambda: scope.key(request), calls)
        ),
        Part(
            name="budget estimate: `worst_case` (request JSON)",
            samples=time_sync(lambda: worst_case(request), calls),
        ),
        Part(
            name="pricing: `price_call`",
            samples=time_sync(lambda: price_call("openai", "gpt-4o-mini", usage), calls),
        ),
        Part(
            name="metrics at commit: `observe_step` (LLM step)",
            samples=time_sync(
                lambda: observe_step(step, agent="assistant", allowed_tools=tools, service_s=1e-3),
                calls,
            ),
        ),
        Part(
            name="metrics at a run's end: `observe_run_end` (once per run, no session)",
            samples=time_sync(lambda: observe_run_end(run, session_cost_usd=None), calls),
        ),
        Part(
            name=f"output filter: `redact_json` of `llm.call`, {chars}-char answer",
            samples=time_sync(lambda: redactor.redact_json(short), calls),
        ),
        Part(
            name=f"output filter: `redact_json` of `llm.call`, {LONG_ANSWER_CHARS}-char answer",
            samples=time_sync(lambda: redactor.redact_json(long), calls),
        ),
    ]


async def redis_round_trip(redis: Redis, calls: int) -> Part:
    """One Redis command through the service's client: the floor of every Redis guard."""
    return Part(
        name="one Redis round trip: `PING` through the service's client",
        samples=await time_async(redis.ping, calls),
    )
