"""The retry layer: what is retried, how long it waits, where it stops."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Coroutine

import pytest
from prometheus_client import REGISTRY

from app.llm import retry
from app.llm.errors import (
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderServerError,
    ProviderTimeout,
)
from app.llm.retry import CallFailed, RetryingModel, RetryPolicy, call_with_retries
from app.llm.types import DeltaCallback, LLMRequest, LLMResponse, Message
from app.tools.base import ToolFailure, ToolUnavailable
from tests.support.runner_fakes import ScriptedModel, text

REQUEST = LLMRequest(provider="openai", model="m", messages=(Message(role="user", content="hi"),))


def policy(**overrides: object) -> RetryPolicy:
    values: dict[str, object] = {
        "attempts": 3,
        "max_elapsed_s": 30.0,
        "wait_initial_s": 0.0,
        "wait_max_s": 10.0,
    }
    values.update(overrides)
    return RetryPolicy(**values)  # type: ignore[arg-type]


def retrying(model: ScriptedModel, rules: RetryPolicy, *, model_name: str = "m") -> RetryingModel:
    return RetryingModel(model, rules, provider="openai", model=model_name, attempt_timeout_s=5.0)


def server_error() -> ProviderServerError:
    return ProviderServerError("openai answered 503: busy", provider="openai", status_code=503)


def retries(model: str, reason: str) -> float:
    labels = {"provider": "openai", "model": model, "reason": reason}
    return REGISTRY.get_sample_value("agentsvc_llm_retries_total", labels) or 0.0


async def test_503_then_200_is_answered_with_its_attempts_and_counted() -> None:
    model = ScriptedModel([server_error(), server_error(), text("ok")])
    before = retries("m-503", "server_error")

    answer = await retrying(model, policy(), model_name="m-503").complete(REQUEST)

    assert answer.message.content == "ok"
    assert answer.attempts == 3
    assert len(model.requests) == 3
    assert retries("m-503", "server_error") - before == 2


async def test_bad_request_is_not_retried() -> None:
    model = ScriptedModel([ProviderBadRequest("400", provider="openai", status_code=400)])
    with pytest.raises(CallFailed) as failed:
        await retrying(model, policy()).complete(REQUEST)
    assert len(model.requests) == 1
    assert failed.value.attempts == 1
    assert isinstance(failed.value.cause, ProviderBadRequest)


async def test_attempts_cap_the_retries_and_the_last_error_comes_out() -> None:
    model = ScriptedModel([server_error() for _ in range(5)])
    with pytest.raises(CallFailed) as failed:
        await retrying(model, policy(attempts=4)).complete(REQUEST)
    assert len(model.requests) == 4
    assert failed.value.attempts == 4
    assert "ProviderServerError" in failed.value.describe()
    assert "after 4 attempts" in failed.value.describe()


async def test_retry_after_is_waited_at_least() -> None:
    limited = ProviderRateLimited("429", provider="openai", retry_after_s=0.2)
    model = ScriptedModel([limited, text("ok")])
    started = time.monotonic()
    answer = await retrying(model, policy()).complete(REQUEST)
    # asyncio may wake a sleep up to its clock resolution early, never later than asked.
    assert time.monotonic() - started >= 0.2 - 0.01
    assert answer.attempts == 2


async def test_retry_after_longer_than_the_longest_wait_ends_the_retries() -> None:
    limited = ProviderRateLimited("429", provider="openai", retry_after_s=60)
    model = ScriptedModel([limited, text("never")])
    with pytest.raises(CallFailed) as failed:
        await retrying(model, policy(wait_max_s=1)).complete(REQUEST)
    assert len(model.requests) == 1
    assert isinstance(failed.value.cause, ProviderRateLimited)


async def test_zero_elapsed_budget_means_no_retry() -> None:
    model = ScriptedModel([server_error(), text("never")])
    with pytest.raises(CallFailed):
        await retrying(model, policy(max_elapsed_s=0)).complete(REQUEST)
    assert len(model.requests) == 1


def test_elapsed_cap_counts_the_wait_before_the_retry() -> None:
    rules = policy(attempts=10, max_elapsed_s=5.0, wait_max_s=3.0)
    assert rules.allows_retry(1, elapsed_s=1.0, wait_s=2.0)
    assert not rules.allows_retry(2, elapsed_s=3.5, wait_s=1.5)  # would start at 5.0
    assert not rules.allows_retry(2, elapsed_s=0.0, wait_s=3.5)  # longer than one wait may be
    assert not rules.allows_retry(10, elapsed_s=0.0, wait_s=0.0)  # attempts spent
    assert policy(max_elapsed_s=None).allows_retry(2, elapsed_s=1e9, wait_s=0.0)
    with pytest.raises(ValueError, match="at least one attempt"):
        policy(attempts=0)


async def test_an_attempt_that_hangs_times_out_and_is_retried() -> None:
    model = ScriptedModel([30.0, text("second")])
    client = RetryingModel(model, policy(), provider="openai", model="m", attempt_timeout_s=0.05)
    answer = await client.complete(REQUEST)
    assert answer.message.content == "second"
    assert answer.attempts == 2


class _BreaksMidStream:
    """Streams a chunk, then fails: the reader has seen text."""

    name = "broken"

    def __init__(self) -> None:
        self.calls = 0

    async def complete(
        self, request: LLMRequest, *, on_delta: DeltaCallback | None = None
    ) -> LLMResponse:
        self.calls += 1
        if on_delta is not None:
            await on_delta("Hel")
        raise ProviderServerError("stream cut", provider="openai")


async def test_a_call_that_already_streamed_text_is_not_retried() -> None:
    model = _BreaksMidStream()
    seen: list[str] = []

    async def on_delta(chunk: str) -> None:
        seen.append(chunk)

    client = RetryingModel(model, policy(), provider="openai", model="m", attempt_timeout_s=5)
    with pytest.raises(CallFailed) as failed:
        await client.complete(REQUEST, on_delta=on_delta)
    assert model.calls == 1
    assert seen == ["Hel"]
    assert failed.value.streamed


async def test_tool_retries_take_only_unavailable_failures() -> None:
    calls: list[str] = []

    async def flaky() -> str:
        calls.append("x")
        if len(calls) < 3:
            raise ToolUnavailable("connection refused")
        return "fine"

    assert await call_with_retries(policy(), flaky, retryable=_unavailable) == "fine"
    assert len(calls) == 3

    async def refused() -> str:
        calls.append("y")
        raise ToolFailure("no such order")

    with pytest.raises(ToolFailure):
        await call_with_retries(policy(), refused, retryable=_unavailable)
    assert calls.count("y") == 1


def _unavailable(error: BaseException) -> bool:
    return isinstance(error, ToolUnavailable)


async def test_timeout_errors_are_reported_as_provider_timeouts() -> None:
    model = ScriptedModel([30.0])
    client = RetryingModel(
        model, policy(attempts=1), provider="openai", model="m", attempt_timeout_s=0.02
    )
    with pytest.raises(CallFailed) as failed:
        await client.complete(REQUEST)
    cause: ProviderError = failed.value.cause
    assert isinstance(cause, ProviderTimeout)
    assert "did not answer within 0.02 s" in str(cause)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The retry waits asked for (not waited), each window's top taken as the random draw."""
    asked: list[float] = []
    real_sleep = asyncio.sleep

    def recorded(delay: float) -> Coroutine[object, object, None]:
        asked.append(delay)
        return real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", recorded)
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    return asked


async def test_a_first_attempt_that_answers_never_enters_tenacity(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    def no_controller(*args: object, **kwargs: object) -> None:
        raise AssertionError("tenacity entered without a retryable failure")

    monkeypatch.setattr(retry, "AsyncRetrying", no_controller)
    answer = await retrying(ScriptedModel([text("ok")]), policy()).complete(REQUEST)
    assert (answer.message.content, answer.attempts) == ("ok", 1)

    model = ScriptedModel([ProviderBadRequest("400", provider="openai", status_code=400)])
    with pytest.raises(CallFailed) as failed:  # not retryable: out at once, no controller
        await retrying(model, policy()).complete(REQUEST)
    assert failed.value.attempts == 1

    async def tool() -> str:
        return "done"

    assert await call_with_retries(policy(), tool, retryable=_unavailable) == "done"
    assert sleeps == []


async def test_a_retryable_first_failure_backs_off_with_full_jitter_and_retry_after(
    sleeps: list[float],
) -> None:
    limited = ProviderRateLimited("429", provider="openai", retry_after_s=3.0)
    model = ScriptedModel([server_error(), server_error(), limited, text("ok")])
    before = retries("m-backoff", "rate_limited")
    rules = policy(attempts=4, wait_initial_s=0.5, wait_max_s=10.0)

    answer = await retrying(model, rules, model_name="m-backoff").complete(REQUEST)

    assert (answer.message.content, answer.attempts) == ("ok", 4)
    # Retry n draws from [0, 0.5 * 2**(n-1)] (its top here); the third waits out Retry-After.
    assert sleeps == [0.5, 1.0, 3.0]
    assert retries("m-backoff", "rate_limited") - before == 1


async def test_the_elapsed_cap_counts_the_first_attempt_made_before_tenacity() -> None:
    # The first attempt alone outlasts the cap: no retry may start, though tenacity's own
    # clock starts only after it.
    model = ScriptedModel([30.0, text("never")])
    client = RetryingModel(
        model, policy(max_elapsed_s=0.2), provider="openai", model="m", attempt_timeout_s=0.3
    )
    with pytest.raises(CallFailed) as failed:
        await client.complete(REQUEST)
    assert isinstance(failed.value.cause, ProviderTimeout)
    assert len(model.requests) == 1
