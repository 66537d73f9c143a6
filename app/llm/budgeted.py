"""The budget guard around an LLM call: reserve the worst case, call, settle to the real usage.

It sits inside the prompt cache (a hit never reaches it, so it costs no budget) and outside
the resilience layers (one reservation covers every retry and fallback of the call). The
reservation is released when the call fails or is cancelled, and settled when it answers.
Settling is queued, not awaited (it cannot be cancelled with the run): spend is never
dropped on the floor, and the call's answer does not wait for the budget store.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from app.bus.budgets import Hold
from app.guards.budget import worst_case
from app.llm.pricing import price_call
from app.llm.types import DeltaCallback, LLMRequest, LLMResponse, ModelClient

HOLD_MARGIN_S = 60.0


class Budgets(Protocol):
    """The service side of budgets (`app.services.budgets.BudgetKeeper`)."""

    async def reserve(self, user_id: str, tokens: int, *, hold_s: float) -> Hold:
        """Hold `tokens` of the user's budget for up to `hold_s` (then the hold lapses), or
        raise the `RunFailure` that ends the run."""
        ...

    def settle(self, hold: Hold, *, tokens: int, cost_usd: float) -> None:
        """Queue freeing the hold and counting the real usage (0, 0: a release). Never
        raises; the store's failure is the budget service's to report."""
        ...


class BudgetedModel:
    """A `ModelClient` whose every call is paid from `user_id`'s token budget."""

    def __init__(
        self, inner: ModelClient, *, user_id: str, budgets: Budgets, call_timeout_s: float
    ) -> None:
        """`call_timeout_s`: the runner's bound on one call; a hold outlives it by
        `HOLD_MARGIN_S` before it lapses (its process must have died)."""
        self.name = inner.name
        self._hold_s = call_timeout_s + HOLD_MARGIN_S
        self._inner = inner
        self._user_id = user_id
        self._budgets = budgets

    async def complete(
        self, request: LLMRequest, *, on_delta: DeltaCallback | None = None
    ) -> LLMResponse:
        tokens = worst_case(request).tokens
        reserving = asyncio.ensure_future(
            self._budgets.reserve(self._user_id, tokens, hold_s=self._hold_s)
        )
        try:
            hold = await asyncio.shield(reserving)
        except asyncio.CancelledError:
            # Cancelled while the store was granting: a hold granted anyway is freed at once
            # rather than lapsing after `_hold_s` (it would count against the user meanwhile).
            reserving.add_done_callback(self._release_late_hold)
            raise
        try:
            response = await self._inner.complete(request, on_delta=on_delta)
        except BaseException:
            self._budgets.settle(hold, tokens=0, cost_usd=0.0)
            raise
        tokens, cost = 0, 0.0
        if not response.cache_hit:
            usage = response.usage
            tokens = usage.input_tokens + usage.output_tokens
            ref = response.served_by or f"{request.provider}/{request.model}"
            provider, _, model = ref.partition("/")
            cost = price_call(provider, model, usage).usd
        self._budgets.settle(hold, tokens=tokens, cost_usd=cost)
        return response

    def _release_late_hold(self, reserving: asyncio.Future[Hold]) -> None:
        if not reserving.cancelled() and reserving.exception() is None:
            self._budgets.settle(reserving.result(), tokens=0, cost_usd=0.0)
