"""The clients the guards benchmark calls: the provider alone, then one guard added per
client as `RunExecutor.model_for` stacks them, and the requests of a run's first call."""

from __future__ import annotations

from collections.abc import Callable

from app.jobs.executor import RunExecutor
from app.llm.breaker import BreakerGuard
from app.llm.budgeted import BudgetedModel
from app.llm.cache import CachedModel
from app.llm.retry import RetryingModel, RetryPolicy
from app.llm.types import LLMRequest, Message, ModelClient, ToolSpec
from app.runner.spec import RunSpec
from app.settings import Settings
from bench.guards_calls import Series

USER = "bench-user"
PROMPT = "Say hello in one short sentence."


def bench_request(text: str, tools: tuple[ToolSpec, ...], instructions: str) -> LLMRequest:
    """A run's first request, as `GuardedRunner._request` builds it, at temperature 0."""
    return LLMRequest(
        provider="local",
        model="local-1",
        messages=(
            Message(role="system", content=instructions),
            Message(role="user", content=text),
        ),
        tools=tools,
        tool_choice="auto",
        temperature=0.0,
        max_output_tokens=1024,
    )


def build_series(
    executor: RunExecutor,
    spec: RunSpec,
    settings: Settings,
    make: Callable[[str], LLMRequest],
    count: int,
) -> tuple[list[Series], Series, Series]:
    """The cache-miss layers (provider, + each guard, outermost last) and the hit pair,
    each with `count` requests."""
    ref = settings.default_model
    provider, model = executor.rt.providers.resolve(ref)
    policy = RetryPolicy(
        attempts=settings.llm_retry_attempts,
        max_elapsed_s=settings.llm_retry_max_s,
        wait_initial_s=settings.retry_wait_initial_s,
        wait_max_s=settings.retry_wait_max_s,
    )
    retrying = RetryingModel(
        provider,
        policy,
        provider=ref.partition("/")[0],
        model=model,
        attempt_timeout_s=settings.llm_timeout_s,
    )
    breaker = BreakerGuard(retrying, executor.resilience.breakers, target=f"llm:{ref}")
    chain = executor.resilience.model_client(spec)
    budgeted = BudgetedModel(
        chain, user_id=USER, budgets=executor.budgets, call_timeout_s=spec.limits.llm_timeout_s
    )
    guarded = executor.model_for(spec, user_id=USER)
    if not isinstance(guarded, CachedModel):
        raise SystemExit("model_for did not put the prompt cache outermost: nothing to measure")
    layers: list[tuple[str, ModelClient, bool]] = [
        ("provider alone (`providers.resolve`)", provider, False),
        ("+ retries (`RetryingModel`)", retrying, False),
        ("+ circuit breaker (`BreakerGuard`)", breaker, False),
        ("+ fallback chain (`Resilience.model_client`)", chain, False),
        ("+ budget reserve/settle (`BudgetedModel`)", budgeted, True),
        ("+ prompt cache = all guards (`model_for`)", guarded, True),
    ]
    miss = [
        Series(
            name=name,
            client=client,
            requests=[make(f"{PROMPT} Layer {k}, call {i}.") for i in range(count)],
            budgeted=pays,
        )
        for k, (name, client, pays) in enumerate(layers)
    ]
    same = [make(PROMPT)] * count
    hit_bare = Series(name="provider alone, one request", client=provider, requests=same)
    hit = Series(
        name="all guards, cache hit", client=guarded, requests=same, budgeted=True, hits=True
    )
    return miss, hit_bare, hit
