"""Token budgets per user and window, and the worst case of one LLM call. Pure values.

A user's budget is a number of tokens (input + output, cached input included) per
fixed window of `window_s` seconds aligned on the Unix epoch, so a daily window
resets at 00:00 UTC. Before every LLM call the worst case of that call is reserved
(`reservation_tokens`); after it the reservation is settled to the real usage. The
counters live in `app.bus.budgets`; these values only decide.

    BudgetExceeded (run failure `budget_exceeded`)
    ├── BudgetExhausted     a reservation was refused: the window's budget is spent
    ├── RunTokensExceeded   the run's token cap would be passed by its next call
    └── RunCostExceeded     the run's cost cap would be passed by its next call
    LLMUnavailable (run failure `llm_unavailable`)
    └── BudgetUnavailable   the budget store is unreachable and budgets fail closed
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from app.llm.pricing import price_call
from app.llm.types import LLMRequest, TokenUsage
from app.runner.errors import BudgetExceeded, LLMUnavailable

CHARS_PER_TOKEN = 4
"""The prompt estimate: characters of the request's canonical JSON per token (cheap, and
above the real count for English text and JSON, whose tokens average 4+ characters)."""
UNBOUNDED_OUTPUT_TOKENS = 4096
"""Output tokens reserved for a call whose agent sets no `max_output_tokens`."""


class BudgetError(BudgetExceeded):
    """A budget or cap stopped a run; `reason` labels the rejection metric."""

    reason: ClassVar[str] = "run"


class BudgetExhausted(BudgetError):
    """The user's budget for the window cannot cover the call. `retry_after_s`: seconds
    until the window resets."""

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RunTokensExceeded(BudgetError):
    reason = "run_tokens"


class RunCostExceeded(BudgetError):
    reason = "run_cost"


class BudgetUnavailable(LLMUnavailable):
    """The budget store did not answer and budgets fail closed: the call was not made."""


@dataclass(frozen=True, kw_only=True)
class CallEstimate:
    """The most one call can consume."""

    prompt_tokens: int
    output_tokens: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    def cost_usd(self, provider: str, model: str) -> float:
        """What the worst case costs at `provider/model`'s prices (uncached input)."""
        usage = TokenUsage(input_tokens=self.prompt_tokens, output_tokens=self.output_tokens)
        return price_call(provider, model, usage).usd


def worst_case(request: LLMRequest) -> CallEstimate:
    """The call's worst case: the prompt estimated as characters / 4 of the request's
    JSON (messages, tools and parameters), plus every output token it may produce."""
    chars = len(request.model_dump_json(exclude_none=True))
    output = request.max_output_tokens
    return CallEstimate(
        prompt_tokens=math.ceil(chars / CHARS_PER_TOKEN),
        output_tokens=UNBOUNDED_OUTPUT_TOKENS if output is None else output,
    )


@dataclass(frozen=True, kw_only=True)
class BudgetWindow:
    """One budget window, in Unix seconds: [start, reset_at)."""

    start: int
    reset_at: int

    def retry_after_s(self, now: float) -> int:
        """Whole seconds from `now` to the reset (at least 1), for `Retry-After`."""
        return max(1, math.ceil(self.reset_at - now))


@dataclass(frozen=True, kw_only=True)
class WindowUsage:
    """A user's counters in one window."""

    used_tokens: int = 0
    """Settled: the real usage of finished calls."""
    reserved_tokens: int = 0
    """Held by calls in flight (their worst case)."""
    cost_usd: float = 0.0
    exhausted_at: int | None = None
    """The budget under which a call was refused that would not have fit even without the
    calls in flight; the window stays closed unless the budget is raised above it."""


@dataclass(frozen=True, kw_only=True)
class TokenBudget:
    """A user's allowance per window."""

    tokens_per_window: int | None
    """None: unlimited (usage is still counted); 0: no LLM call at all."""
    window_s: int

    def window(self, now: float) -> BudgetWindow:
        """The window `now` (Unix seconds) falls in."""
        start = int(now // self.window_s) * self.window_s
        return BudgetWindow(start=start, reset_at=start + self.window_s)

    def is_spent(self, usage: WindowUsage) -> bool:
        """Whether new requests are refused in this window: the settled usage reached the
        budget, or a call was refused that could never have fit under this budget."""
        limit = self.tokens_per_window
        if limit is None:
            return False
        if usage.used_tokens >= limit:
            return True
        return usage.exhausted_at is not None and usage.exhausted_at >= limit

    def check_open(self, usage: WindowUsage, now: float) -> None:
        """Raise `BudgetExhausted` when the window is spent (see `is_spent`)."""
        if self.is_spent(usage):
            window = self.window(now)
            raise BudgetExhausted(
                f"the token budget of {self.tokens_per_window} per {self.window_s} s is spent "
                f"({usage.used_tokens} used); it resets in {window.retry_after_s(now)} s",
                retry_after_s=window.retry_after_s(now),
            )

    def refusal(self, tokens: int, usage: WindowUsage, now: float) -> BudgetExhausted:
        """The error of a refused reservation of `tokens`."""
        window = self.window(now)
        return BudgetExhausted(
            f"the call needs up to {tokens} tokens but the budget of {self.tokens_per_window}"
            f" per {self.window_s} s has {usage.used_tokens} used and "
            f"{usage.reserved_tokens} reserved; it resets in {window.retry_after_s(now)} s",
            retry_after_s=window.retry_after_s(now),
        )
