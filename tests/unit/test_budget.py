"""Budget values, the worst-case estimate, the in-process ledger and rate limiter, the budget
guard around a model, and the per-run caps in the runner. No services."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from app.bus.budgets import Hold
from app.bus.ratelimit import InProcessRateLimiter
from app.guards.budget import (
    UNBOUNDED_OUTPUT_TOKENS,
    BudgetExhausted,
    CallEstimate,
    RunCostExceeded,
    RunTokensExceeded,
    TokenBudget,
    WindowUsage,
    worst_case,
)
from app.guards.limits import RunLimits, lowest
from app.llm.budgeted import HOLD_MARGIN_S, BudgetedModel
from app.llm.errors import ProviderServerError
from app.llm.types import DeltaCallback, LLMRequest, LLMResponse, Message, TokenUsage
from app.runner.loop import GuardedRunner, RunSpec, start_run
from app.runner.protocols import Completed, Failed
from app.tools.base import ToolContext, ToolRegistry
from tests.support.runner_fakes import CountingTool, MemoryStore, ScriptedModel, text, tool_call

DAY = 86400
NOON = datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp()


def request(content: str = "hello", *, max_output: int | None = 100) -> LLMRequest:
    return LLMRequest(
        provider="openai",
        model="gpt-4o-mini",
        messages=(Message(role="user", content=content),),
        max_output_tokens=max_output,
    )


def test_daily_window_starts_at_utc_midnight_and_retry_after_counts_to_the_reset() -> None:
    window = TokenBudget(tokens_per_window=100, window_s=DAY).window(NOON)
    assert datetime.fromtimestamp(window.start, UTC) == datetime(2026, 3, 1, tzinfo=UTC)
    assert datetime.fromtimestamp(window.reset_at, UTC) == datetime(2026, 3, 2, tzinfo=UTC)
    assert window.retry_after_s(NOON) == 12 * 3600
    assert window.retry_after_s(window.reset_at - 0.2) == 1


def test_worst_case_is_a_quarter_of_the_request_json_plus_all_output() -> None:
    req = request("x" * 4000)
    estimate = worst_case(req)
    assert estimate.prompt_tokens == math.ceil(len(req.model_dump_json(exclude_none=True)) / 4)
    assert estimate.prompt_tokens >= 1000
    assert estimate.output_tokens == 100
    assert estimate.tokens == estimate.prompt_tokens + 100
    assert worst_case(request(max_output=None)).output_tokens == UNBOUNDED_OUTPUT_TOKENS
    # gpt-4o-mini: $0.15 / M input, $0.60 / M output.
    cost = CallEstimate(prompt_tokens=1_000_000, output_tokens=1_000_000).cost_usd(
        "openai", "gpt-4o-mini"
    )
    assert cost == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("usage", "spent"),
    [
        (WindowUsage(used_tokens=99), False),
        (WindowUsage(used_tokens=100), True),
        (WindowUsage(used_tokens=10, exhausted_at=100), True),
        # Raised above the budget a call was refused under: open again.
        (WindowUsage(used_tokens=10, exhausted_at=50), False),
        (WindowUsage(used_tokens=10, reserved_tokens=500), False),
    ],
)
def test_a_window_is_spent_when_used_up_or_a_call_could_never_fit(
    usage: WindowUsage, spent: bool
) -> None:
    budget = TokenBudget(tokens_per_window=100, window_s=DAY)
    assert budget.is_spent(usage) is spent
    if spent:
        with pytest.raises(BudgetExhausted) as caught:
            budget.check_open(usage, NOON)
        assert caught.value.retry_after_s == 12 * 3600
        assert caught.value.error_type == "budget_exceeded"
    else:
        budget.check_open(usage, NOON)


def test_unlimited_and_zero_budgets_mean_what_they_say() -> None:
    unlimited = TokenBudget(tokens_per_window=None, window_s=DAY)
    assert not unlimited.is_spent(WindowUsage(used_tokens=10**12, exhausted_at=10**12))
    assert TokenBudget(tokens_per_window=0, window_s=DAY).is_spent(WindowUsage())


async def test_in_process_rate_limit_allows_n_at_once_then_one_per_interval() -> None:
    now = [1000.0]
    limiter = InProcessRateLimiter(clock=lambda: now[0])
    waits = [await limiter.acquire("k", per_minute=6) for _ in range(7)]
    assert waits[:6] == [0.0] * 6
    assert waits[6] == pytest.approx(10.0)
    assert await limiter.acquire("other", per_minute=6) == 0.0
    now[0] += 10.0
    assert await limiter.acquire("k", per_minute=6) == 0.0
    assert await limiter.acquire("k", per_minute=6) == pytest.approx(10.0)


def test_lowest_cap_wins_and_none_means_no_cap() -> None:
    assert lowest(None, None) is None
    assert lowest(500, None) == 500
    assert lowest(500, 200) == 200
    assert lowest(None, 0.5) == 0.5


def test_run_caps_refuse_a_call_whose_worst_case_would_pass_them() -> None:
    limits = RunLimits(
        max_turns=5, timeout_s=10, llm_timeout_s=5, max_run_tokens=1000, max_run_cost_usd=0.01
    )
    call = CallEstimate(prompt_tokens=200, output_tokens=100)
    limits.check_spend(tokens=700, cost_usd=0.0, next_call=call, next_cost_usd=0.001)
    with pytest.raises(RunTokensExceeded, match="token cap of 1000"):
        limits.check_spend(tokens=701, cost_usd=0.0, next_call=call, next_cost_usd=0.001)
    with pytest.raises(RunCostExceeded, match=r"cost cap of \$0.01"):
        limits.check_spend(tokens=0, cost_usd=0.0095, next_call=call, next_cost_usd=0.001)
    RunLimits(max_turns=1, timeout_s=1, llm_timeout_s=1).check_spend(
        tokens=10**9, cost_usd=10**6, next_call=call, next_cost_usd=10**6
    )


@dataclass
class RecordingBudgets:
    """Budgets that grant everything and record what is settled."""

    settled: list[tuple[int, int, float]] = field(default_factory=list)
    """(tokens held, tokens used, cost)."""
    hold_s: list[float] = field(default_factory=list)

    async def reserve(self, user_id: str, tokens: int, *, hold_s: float) -> Hold:
        self.hold_s.append(hold_s)
        return Hold(user_id=user_id, window_start=0, hold_id="h", tokens=tokens, expire_at=0)

    def settle(self, hold: Hold, *, tokens: int, cost_usd: float) -> None:
        self.settled.append((hold.tokens, tokens, cost_usd))


@dataclass
class HangingModel:
    name: str = "hanging"
    called: asyncio.Event = field(default_factory=asyncio.Event)

    async def complete(
        self, request: LLMRequest, *, on_delta: DeltaCallback | None = None
    ) -> LLMResponse:
        self.called.set()
        await asyncio.Event().wait()
        raise AssertionError("never answers")


def answer(*, input_tokens: int, output_tokens: int, **extra: object) -> LLMResponse:
    return LLMResponse.model_validate(
        {
            "message": Message(role="assistant", content="ok"),
            "usage": TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens),
            "model": "gpt-4o-mini",
            **extra,
        }
    )


async def test_budgeted_model_reserves_the_worst_case_and_settles_the_real_usage() -> None:
    budgets = RecordingBudgets()
    inner = ScriptedModel([answer(input_tokens=1_000_000, output_tokens=0)])
    model = BudgetedModel(inner, user_id="u", budgets=budgets, call_timeout_s=5)
    req = request()
    await model.complete(req)
    ((held, used, cost),) = budgets.settled
    assert held == worst_case(req).tokens
    assert budgets.hold_s == [5 + HOLD_MARGIN_S]  # outlives the longest call the runner allows
    assert used == 1_000_000
    assert cost == pytest.approx(0.15)


async def test_budgeted_model_prices_the_fallback_that_answered() -> None:
    budgets = RecordingBudgets()
    served = answer(input_tokens=1_000_000, output_tokens=0, served_by="openai/gpt-4o")
    model = BudgetedModel(ScriptedModel([served]), user_id="u", budgets=budgets, call_timeout_s=5)
    await model.complete(request())
    assert budgets.settled[0][2] == pytest.approx(2.50)


async def test_budgeted_model_releases_the_hold_when_the_call_fails_or_is_cancelled() -> None:
    budgets = RecordingBudgets()
    failing = ScriptedModel([ProviderServerError("boom", provider="openai")])
    with pytest.raises(ProviderServerError):
        await BudgetedModel(failing, user_id="u", budgets=budgets, call_timeout_s=5).complete(
            request()
        )
    hanging = HangingModel()
    call = asyncio.ensure_future(
        BudgetedModel(hanging, user_id="u", budgets=budgets, call_timeout_s=5).complete(request())
    )
    await hanging.called.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert [(used, cost) for _, used, cost in budgets.settled] == [(0, 0.0), (0, 0.0)]


async def test_a_hold_granted_after_its_call_was_cancelled_is_freed_at_once() -> None:
    granting = asyncio.Event()
    reached = asyncio.Event()

    class SlowBudgets(RecordingBudgets):
        async def reserve(self, user_id: str, tokens: int, *, hold_s: float) -> Hold:
            reached.set()
            await granting.wait()  # the store has granted; its answer is on the way
            return await super().reserve(user_id, tokens, hold_s=hold_s)

    budgets = SlowBudgets()
    model = BudgetedModel(HangingModel(), user_id="u", budgets=budgets, call_timeout_s=5)
    call = asyncio.ensure_future(model.complete(request()))
    await reached.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert budgets.settled == []
    granting.set()
    for _ in range(3):
        await asyncio.sleep(0)
    assert [(used, cost) for _, used, cost in budgets.settled] == [(0, 0.0)]


def caps_runner(
    model: ScriptedModel,
    store: MemoryStore,
    *,
    max_run_tokens: int | None = None,
    max_run_cost_usd: float | None = None,
    fallback_models: tuple[str, ...] = (),
) -> GuardedRunner:
    registry = ToolRegistry()
    registry.add(CountingTool("echo").tool())
    spec = RunSpec(
        run_id="00000000-0000-0000-0000-000000000002",
        provider="openai",
        model="gpt-4o-mini",
        fallback_models=fallback_models,
        tools=frozenset({"echo"}),
        limits=RunLimits(
            max_turns=5,
            timeout_s=5,
            llm_timeout_s=5,
            max_run_tokens=max_run_tokens,
            max_run_cost_usd=max_run_cost_usd,
        ),
        max_output_tokens=100,
    )
    ctx = ToolContext(sandbox_dir=Path("/nonexistent"), http=httpx.AsyncClient())
    return GuardedRunner(spec, model=model, tools=registry, tool_context=ctx, store=store)


@pytest.mark.parametrize(
    ("used", "tokens_cap", "cost_cap", "message"),
    [
        # The first call's worst case (~100 prompt + 100 output tokens) fits 1000; after
        # 900 tokens used the second's does not.
        (900, 1000, None, "token cap of 1000"),
        # One call's worst case costs ~$0.0001 at gpt-4o-mini's prices; a first call of
        # 400k input tokens spent $0.06.
        (400_000, None, 0.06, "cost cap of $0.06"),
    ],
)
async def test_run_cap_fails_the_run_before_the_call_and_keeps_its_checkpoint(
    used: int, tokens_cap: int | None, cost_cap: float | None, message: str
) -> None:
    first = tool_call("echo", {"text": "x"}).model_copy(
        update={"usage": TokenUsage(input_tokens=used, output_tokens=0)}
    )
    model = ScriptedModel([first, text("never")])
    store = MemoryStore()
    cp, _ = start_run(run_id="r", instructions="be brief", user_input="hi", data={})
    runner = caps_runner(model, store, max_run_tokens=tokens_cap, max_run_cost_usd=cost_cap)
    outcome = await runner.run(cp)

    assert isinstance(outcome, Failed)
    assert outcome.error_type == "budget_exceeded"
    assert message in outcome.message
    assert len(model.requests) == 1  # the second call was never made
    final = store.steps[-1].checkpoint
    assert final.turn == 1
    assert final.usage.tool_calls == 1
    assert [m.role for m in final.messages][-2:] == ["assistant", "tool"]


@pytest.mark.parametrize(
    ("fallbacks", "completes"),
    [
        # A call's worst case (~150 prompt + 100 output tokens) costs ~$0.0001 at
        # gpt-4o-mini's prices and ~$0.0014 at gpt-4o's.
        ((), True),
        (("local/local-1",), True),  # unpriced: costs 0
        (("local/local-1", "openai/gpt-4o"), False),
    ],
)
async def test_run_cost_cap_holds_at_the_dearest_model_that_may_answer(
    fallbacks: tuple[str, ...], completes: bool
) -> None:
    model = ScriptedModel([text("done")])
    cp, _ = start_run(run_id="r", instructions="be brief", user_input="hi", data={})
    runner = caps_runner(model, MemoryStore(), max_run_cost_usd=0.0005, fallback_models=fallbacks)
    outcome = await runner.run(cp)
    if completes:
        assert outcome == Completed("done")
        return
    # The fallback chain could hand the call to gpt-4o, whose worst case passes the cap.
    assert isinstance(outcome, Failed)
    assert outcome.error_type == "budget_exceeded"
    assert "cost cap of $0.0005" in outcome.message
    assert model.requests == []


async def test_run_within_its_caps_completes() -> None:
    model = ScriptedModel([text("done")])
    cp, _ = start_run(run_id="r", instructions="be brief", user_input="hi", data={})
    outcome = await caps_runner(model, MemoryStore(), max_run_tokens=100_000).run(cp)
    assert outcome == Completed("done")
