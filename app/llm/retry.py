"""The one retry layer: LLM calls (and idempotent tool calls) tried again on transient failures.

Built on tenacity: full-jitter exponential backoff (`wait_random_exponential`), at
least the server's `Retry-After`, capped by attempts and by elapsed time (no retry
starts whose wait would end past the cap). The provider clients make one HTTP
request per call and never retry themselves.

The first attempt runs outside tenacity: nearly every call succeeds at once, and a
controller per call costs tens of µs. Only a retryable failure enters tenacity, which
replays that failure as its own first attempt, so every wait, cap and count is the one
tenacity would have given the whole call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from app.llm.errors import (
    ProviderError,
    ProviderRateLimited,
    ProviderServerError,
    ProviderTimeout,
    ProviderUnavailable,
)
from app.llm.types import DeltaCallback, LLMRequest, LLMResponse, ModelClient
from app.observability.metrics import LLM_RETRIES

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How one call is tried again. 0 is never "the default": a 0 wait waits nothing, a 0
    elapsed cap allows no retry."""

    attempts: int
    """Calls in all, the first included (1: never retry)."""
    max_elapsed_s: float | None
    """No retry starts once the time since the first attempt plus the next wait reaches
    this (None: attempts alone cap the retries)."""
    wait_initial_s: float
    """Retry n waits a random time in [0, min(wait_max_s, wait_initial_s * 2**(n-1))]."""
    wait_max_s: float
    """Longest single wait; a `Retry-After` longer than this ends the retries instead."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("a call needs at least one attempt")

    def allows_retry(self, attempt: int, elapsed_s: float, wait_s: float) -> bool:
        """Whether a call whose `attempt` (1-based) failed `elapsed_s` after the first one
        began may be tried again after waiting `wait_s`."""
        if attempt >= self.attempts or wait_s > self.wait_max_s:
            return False
        return self.max_elapsed_s is None or elapsed_s + wait_s < self.max_elapsed_s

    def retrying(
        self,
        retryable: Callable[[BaseException], bool],
        *,
        on_retry: Callable[[Exception], None],
        started_at: float | None = None,
    ) -> AsyncRetrying:
        """A tenacity controller for one call: retries what `retryable` accepts, reports each
        retry to `on_retry` before its wait, lets the last error through. `started_at`: when
        the first attempt began (`time.monotonic()`), if before the controller's start."""

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            if isinstance(error, Exception):
                on_retry(error)

        return AsyncRetrying(
            stop=_PolicyStop(self, started_at),
            wait=_AtLeastRetryAfter(
                wait_random_exponential(multiplier=self.wait_initial_s, max=self.wait_max_s)
            ),
            retry=retry_if_exception(retryable),
            before_sleep=before_sleep,
            reraise=True,
            sleep=asyncio.sleep,
        )


class _AtLeastRetryAfter(wait_base):
    """The backoff, or the server's `Retry-After` when that is longer."""

    def __init__(self, backoff: wait_base) -> None:
        self._backoff = backoff

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = self._backoff(retry_state)
        error = retry_state.outcome.exception() if retry_state.outcome is not None else None
        if isinstance(error, ProviderRateLimited) and error.retry_after_s is not None:
            wait = max(wait, error.retry_after_s)
        return wait


class _PolicyStop(stop_base):
    """Stop when the policy allows no retry (tenacity computes the wait first). The elapsed
    time counts from `started_at` when given (a first attempt made before tenacity's start)."""

    def __init__(self, policy: RetryPolicy, started_at: float | None) -> None:
        self._policy = policy
        self._started_at = started_at

    def __call__(self, retry_state: RetryCallState) -> bool:
        # tenacity's own times are time.monotonic() too.
        start = retry_state.start_time if self._started_at is None else self._started_at
        ended = retry_state.outcome_timestamp
        elapsed = 0.0 if ended is None else ended - start
        return not self._policy.allows_retry(
            retry_state.attempt_number, elapsed, retry_state.upcoming_sleep
        )


class CallFailed(ProviderError):
    """A model call failed for good: `cause` is its last error, after `attempts` calls.

    `streamed` says text had already reached the reader: neither a retry nor another
    model may answer again, or the reader would see the answer twice."""

    def __init__(self, cause: ProviderError, *, attempts: int, streamed: bool = False) -> None:
        super().__init__(str(cause), provider=cause.provider, status_code=cause.status_code)
        self.cause = cause
        self.attempts = attempts
        self.streamed = streamed

    def describe(self) -> str:
        """`ErrorType: message`, with the attempts when there were retries."""
        text = f"{type(self.cause).__name__}: {self.cause}"
        if self.streamed:
            text += " (after part of the answer was streamed; not retried)"
        elif self.attempts > 1:
            text += f" (after {self.attempts} attempts)"
        return text


def _retry_reason(error: Exception) -> str:
    if isinstance(error, ProviderRateLimited):
        return "rate_limited"
    if isinstance(error, ProviderTimeout):
        return "timeout"
    if isinstance(error, ProviderUnavailable):
        return "unavailable"
    if isinstance(error, ProviderServerError):
        return "server_error"
    return type(error).__name__


def _retryable_provider_error(error: BaseException) -> bool:
    return isinstance(error, ProviderError) and error.retryable


class RetryingModel:
    """A `ModelClient` that tries its provider again on retryable failures (429, 5xx,
    timeouts, connection errors), each attempt bounded by `attempt_timeout_s`."""

    def __init__(
        self,
        client: ModelClient,
        policy: RetryPolicy,
        *,
        provider: str,
        model: str,
        attempt_timeout_s: float,
    ) -> None:
        self.name = client.name
        self._client = client
        self._policy = policy
        self._provider = provider
        self._model = model
        self._attempt_timeout_s = attempt_timeout_s

    async def complete(
        self, request: LLMRequest, *, on_delta: DeltaCallback | None = None
    ) -> LLMResponse:
        """The answer, with `attempts` set; or `CallFailed` with the last error."""
        attempts = 0
        streamed = False

        async def relay(text: str) -> None:
            nonlocal streamed
            streamed = True
            assert on_delta is not None
            await on_delta(text)

        async def attempt() -> LLMResponse:
            nonlocal attempts
            attempts += 1
            try:
                async with asyncio.timeout(self._attempt_timeout_s):
                    return await self._client.complete(
                        request, on_delta=None if on_delta is None else relay
                    )
            except TimeoutError:
                error: ProviderError = ProviderTimeout(
                    f"{self._provider} did not answer within {self._attempt_timeout_s:g} s",
                    provider=self._provider,
                )
            except ProviderError as exc:
                error = exc
            if streamed:
                raise CallFailed(error, attempts=attempts, streamed=True) from error
            raise error

        def on_retry(error: Exception) -> None:
            LLM_RETRIES.labels(self._provider, self._model, _retry_reason(error)).inc()

        try:
            response = await call_with_retries(
                self._policy, attempt, retryable=_retryable_provider_error, on_retry=on_retry
            )
        except CallFailed:
            raise
        except ProviderError as exc:
            raise CallFailed(exc, attempts=attempts) from exc
        if response.attempts == attempts:  # the first attempt answered: nothing to copy
            return response
        return response.model_copy(update={"attempts": attempts})


async def call_with_retries(
    policy: RetryPolicy,
    fn: Callable[[], Awaitable[T]],
    *,
    retryable: Callable[[BaseException], bool],
    on_retry: Callable[[Exception], None] = lambda _: None,
) -> T:
    """`fn()`, tried again under `policy` while it raises what `retryable` accepts.

    The first attempt is a plain await; its retryable failure hands over to tenacity."""
    started_at = time.monotonic()
    try:
        return await fn()
    except BaseException as exc:
        if not retryable(exc):
            raise
        first = exc
    replayed = False

    async def attempt() -> T:  # tenacity awaits only what a coroutine function returns
        nonlocal replayed
        if not replayed:
            # The failure above, as tenacity's attempt 1: its backoff, Retry-After, caps
            # and `on_retry` then treat it as if tenacity had made that call.
            replayed = True
            raise first
        return await fn()

    controller = policy.retrying(retryable, on_retry=on_retry, started_at=started_at)
    result: T = await controller(attempt)
    return result
