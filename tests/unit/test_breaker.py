"""Circuit breakers: the state machine, the policy's edge values, the model and tool guards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import BaseModel

from app.bus.breakers import LocalBreakerStore
from app.jobs.resilience import guard_tool
from app.llm.breaker import (
    BreakerGuard,
    BreakerPolicy,
    BreakerReport,
    Breakers,
    Change,
    CircuitOpen,
    Verdict,
)
from app.llm.errors import ProviderBadRequest, ProviderServerError
from app.llm.retry import RetryPolicy
from app.llm.types import LLMRequest, Message
from app.tools.base import Tool, ToolContext, ToolFailure, ToolUnavailable
from tests.support.runner_fakes import ScriptedModel, text

REQUEST = LLMRequest(provider="openai", model="m", messages=(Message(role="user", content="hi"),))


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def breakers(clock: Clock, **overrides: object) -> Breakers:
    values: dict[str, object] = {
        "failure_threshold": 3,
        "window_s": 10.0,
        "cooldown_s": 5.0,
        "half_open_probes": 1,
    }
    values.update(overrides)
    return Breakers(LocalBreakerStore(clock), BreakerPolicy(**values))  # type: ignore[arg-type]


POLICY = BreakerPolicy(failure_threshold=3, window_s=10.0, cooldown_s=5.0, half_open_probes=1)


@dataclass
class SharedStore:
    """The store every replica asks (Redis in production), counting this replica's questions;
    `gate`, when set, holds each admit's answer until it opens."""

    inner: LocalBreakerStore
    asked: list[str] = field(default_factory=list)
    gate: asyncio.Event | None = None

    async def admit(self, target: str, policy: BreakerPolicy) -> Verdict:
        self.asked.append("admit")
        verdict = await self.inner.admit(target, policy)
        if self.gate is not None:
            await self.gate.wait()
        return verdict

    async def fail(self, target: str, policy: BreakerPolicy) -> Change:
        self.asked.append("fail")
        return await self.inner.fail(target, policy)

    async def succeed(self, target: str, policy: BreakerPolicy) -> Change:
        self.asked.append("succeed")
        return await self.inner.succeed(target, policy)

    async def snapshot(self, policy: BreakerPolicy) -> BreakerReport:
        return await self.inner.snapshot(policy)


def replicas(clock: Clock, *, trust_s: float = 1.0) -> tuple[Breakers, SharedStore, Breakers]:
    """`here`, trusting closed answers for `trust_s`, its view of the store, and `there`,
    another replica over the same store that always asks."""
    inner = LocalBreakerStore(clock)
    shared = SharedStore(inner)
    here = Breakers(shared, POLICY, trust_closed_s=trust_s, clock=clock)
    return here, shared, Breakers(inner, POLICY)


async def fail(b: Breakers, target: str, times: int = 1) -> None:
    for _ in range(times):
        await b.record(target, ok=False, probe=False)


def state(target: str) -> float | None:
    return REGISTRY.get_sample_value("agentsvc_breaker_state", {"target": target})


def transitions(target: str, to: str) -> float:
    labels = {"target": target, "state": to}
    return REGISTRY.get_sample_value("agentsvc_breaker_transitions_total", labels) or 0.0


async def test_opens_after_threshold_failures_within_the_window() -> None:
    clock = Clock()
    b = breakers(clock)
    await fail(b, "t:window", 2)
    clock.now += 11  # those two leave the window
    await fail(b, "t:window", 2)
    assert await b.admit("t:window") is False  # still closed: 2 failures in the window
    await fail(b, "t:window")
    with pytest.raises(CircuitOpen) as refused:
        await b.admit("t:window")
    assert refused.value.retry_in_s == pytest.approx(5.0)
    assert state("t:window") == 2
    assert transitions("t:window", "open") == 1


async def test_half_open_lets_one_probe_through_and_its_success_closes() -> None:
    clock = Clock()
    b = breakers(clock)
    await fail(b, "t:probe", 3)
    clock.now += 5
    assert await b.admit("t:probe") is True  # the probe
    assert state("t:probe") == 1
    with pytest.raises(CircuitOpen):
        await b.admit("t:probe")  # one probe at a time
    await b.record("t:probe", ok=True, probe=True)
    assert await b.admit("t:probe") is False
    assert state("t:probe") == 0
    assert (await b.snapshot()).breakers == []  # closed, nothing counted


async def test_failed_probe_reopens_for_a_full_cool_down() -> None:
    clock = Clock()
    b = breakers(clock)
    await fail(b, "t:refail", 3)
    clock.now += 5
    assert await b.admit("t:refail")
    clock.now += 1
    await b.record("t:refail", ok=False, probe=True)
    clock.now += 4.9  # 5.9 s after opening, 4.9 s after the re-failure
    with pytest.raises(CircuitOpen) as refused:
        await b.admit("t:refail")
    assert refused.value.retry_in_s == pytest.approx(0.1)
    assert transitions("t:refail", "open") == 2


async def test_failure_reported_while_open_extends_the_open_period() -> None:
    clock = Clock()
    b = breakers(clock)
    await fail(b, "t:extend", 3)
    clock.now += 4
    await fail(b, "t:extend")  # a call let in before the breaker opened fails late
    clock.now += 4  # 8 s after opening: open still, 4 s after the last failure
    with pytest.raises(CircuitOpen):
        await b.admit("t:extend")
    report = await b.snapshot()
    (shot,) = report.breakers
    assert (shot.target, shot.state) == ("t:extend", "open")
    assert shot.retry_in_s == pytest.approx(1.0)
    assert report.shared is False


async def test_zero_cool_down_means_probe_at_once() -> None:
    clock = Clock()
    b = breakers(clock, cooldown_s=0.0, failure_threshold=1)
    await fail(b, "t:zero")  # one failure opens: threshold 1
    assert transitions("t:zero", "open") == 1
    assert await b.admit("t:zero") is True  # no wait at all: a probe right away


async def test_a_probe_that_never_reports_frees_its_place_after_the_cool_down() -> None:
    clock = Clock()
    b = breakers(clock)
    await fail(b, "t:stale", 3)
    clock.now += 5
    assert await b.admit("t:stale")  # this probe's process dies
    clock.now += 5
    assert await b.admit("t:stale")


async def test_a_closed_answer_is_trusted_for_the_window_then_asked_again() -> None:
    clock = Clock()
    here, shared, _ = replicas(clock)
    assert await here.admit("t:trust") is False
    clock.now += 0.99
    assert await here.admit("t:trust") is False
    assert shared.asked == ["admit"]  # the second call did not ask
    clock.now += 0.01  # 1 s after the question
    assert await here.admit("t:trust") is False
    assert shared.asked == ["admit", "admit"]


async def test_zero_trust_asks_the_store_before_every_call() -> None:
    here, shared, _ = replicas(Clock(), trust_s=0.0)
    for _ in range(3):
        assert await here.admit("t:no-trust") is False
    assert shared.asked == ["admit"] * 3
    with pytest.raises(ValueError, match="trust_closed_s"):
        Breakers(shared, POLICY, trust_closed_s=-1.0)


async def test_failures_reach_the_store_at_once_and_opening_ends_the_trust() -> None:
    here, shared, _ = replicas(Clock())
    await here.admit("t:own")
    await fail(here, "t:own", 2)
    assert shared.asked == ["admit", "fail", "fail"]
    assert await here.admit("t:own") is False  # still closed (2 of 3): trusted, not asked
    await fail(here, "t:own")  # the third opens the breaker
    with pytest.raises(CircuitOpen):  # at once, though the window has not passed
        await here.admit("t:own")
    assert shared.asked == ["admit", "fail", "fail", "fail", "admit"]
    assert state("t:own") == 2


async def test_another_replicas_open_breaker_is_unseen_at_most_the_trust_window() -> None:
    clock = Clock()
    here, _, there = replicas(clock)
    await here.admit("t:elsewhere")
    await fail(there, "t:elsewhere", 3)  # opened by the other replica
    clock.now += 0.9
    assert await here.admit("t:elsewhere") is False  # stale, within the bound
    clock.now += 0.1
    with pytest.raises(CircuitOpen):
        await here.admit("t:elsewhere")


async def test_an_open_breaker_in_a_snapshot_ends_the_trust() -> None:
    here, _, there = replicas(Clock())
    await here.admit("t:listed")
    await fail(there, "t:listed", 3)
    (shot,) = (await here.snapshot()).breakers  # the admin route or a metrics read
    assert shot.state == "open"
    with pytest.raises(CircuitOpen):
        await here.admit("t:listed")


async def test_a_closed_answer_overtaken_by_an_opening_is_not_trusted() -> None:
    clock = Clock()
    here, shared, there = replicas(clock)
    shared.gate = asyncio.Event()
    asking = asyncio.create_task(here.admit("t:race"))
    await asyncio.sleep(0)  # the store has answered "closed"; the answer is on its way
    await fail(there, "t:race", 2)
    await fail(here, "t:race")  # this replica's failure opens it, and it hears so first
    shared.gate.set()
    assert await asking is False  # the call was let in before it opened
    with pytest.raises(CircuitOpen):
        await here.admit("t:race")


def test_policy_refuses_meaningless_values() -> None:
    for bad in ({"failure_threshold": 0}, {"half_open_probes": 0}, {"cooldown_s": -1}):
        values: dict[str, object] = {
            "failure_threshold": 1,
            "window_s": 1.0,
            "cooldown_s": 0.0,
            "half_open_probes": 1,
        }
        with pytest.raises(ValueError, match="must be"):
            BreakerPolicy(**(values | bad))  # type: ignore[arg-type]


async def test_open_model_breaker_fails_fast_without_calling_the_model() -> None:
    clock = Clock()
    b = breakers(clock, failure_threshold=2)
    model = ScriptedModel([server_error(), server_error(), text("never")])
    guard = BreakerGuard(model, b, target="llm:openai/guarded")
    for _ in range(2):
        with pytest.raises(ProviderServerError):
            await guard.complete(REQUEST)
    with pytest.raises(CircuitOpen):
        await guard.complete(REQUEST)
    assert len(model.requests) == 2


async def test_bad_requests_do_not_count_against_the_model() -> None:
    b = breakers(Clock(), failure_threshold=1)
    bad = ProviderBadRequest("400", provider="openai", status_code=400)
    model = ScriptedModel([bad, text("fine")])
    guard = BreakerGuard(model, b, target="llm:openai/bad-request")
    with pytest.raises(ProviderBadRequest):
        await guard.complete(REQUEST)
    assert (await guard.complete(REQUEST)).message.content == "fine"


def server_error() -> ProviderServerError:
    return ProviderServerError("503", provider="openai", status_code=503)


class Args(BaseModel):
    n: int = 0


@pytest.fixture
async def ctx(tmp_path: Path) -> AsyncIterator[ToolContext]:
    async with httpx.AsyncClient() as http:
        yield ToolContext(sandbox_dir=tmp_path, http=http)


def flaky_tool(name: str, calls: list[str], *, idempotent: bool, fail: int) -> Tool:
    async def fn(args: BaseModel, ctx: ToolContext) -> str:
        calls.append(name)
        if len(calls) <= fail:
            raise ToolUnavailable("upstream refused the connection")
        return "done"

    return Tool(name=name, description="d", args_model=Args, fn=fn, idempotent=idempotent)


RETRY = RetryPolicy(attempts=3, max_elapsed_s=None, wait_initial_s=0.0, wait_max_s=1.0)


async def test_idempotent_tool_is_retried_non_idempotent_is_not(ctx: ToolContext) -> None:
    b = breakers(Clock(), failure_threshold=5)
    calls: list[str] = []
    safe = guard_tool(flaky_tool("safe", calls, idempotent=True, fail=2), b, RETRY)
    assert await safe.fn(Args(), ctx) == "done"
    assert calls == ["safe"] * 3

    calls.clear()
    once = guard_tool(flaky_tool("once", calls, idempotent=False, fail=1), b, RETRY)
    with pytest.raises(ToolUnavailable):
        await once.fn(Args(), ctx)
    assert calls == ["once"]


async def test_open_tool_breaker_answers_without_running_the_tool(ctx: ToolContext) -> None:
    b = breakers(Clock(), failure_threshold=2)
    calls: list[str] = []
    tool = guard_tool(flaky_tool("down", calls, idempotent=False, fail=99), b, RETRY)
    for _ in range(2):
        with pytest.raises(ToolUnavailable):
            await tool.fn(Args(), ctx)
    with pytest.raises(ToolFailure, match="down is not available now: circuit breaker open"):
        await tool.fn(Args(), ctx)
    assert len(calls) == 2


async def test_tool_refusals_do_not_open_its_breaker(ctx: ToolContext) -> None:
    b = breakers(Clock(), failure_threshold=1)
    calls: list[str] = []

    async def refuse(args: BaseModel, ctx: ToolContext) -> str:
        calls.append("x")
        raise ToolFailure("no such order")

    tool = guard_tool(Tool(name="refuser", description="d", args_model=Args, fn=refuse), b, RETRY)
    for _ in range(3):
        with pytest.raises(ToolFailure, match="no such order"):
            await tool.fn(Args(), ctx)
    assert calls == ["x"] * 3  # never retried (not an outage), never refused
