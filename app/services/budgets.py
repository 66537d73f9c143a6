"""Token budgets as the service applies them: whose budget, the Redis-down policy, metrics.

A user's budget is their override (`PUT /agent/admin/budgets/{user}`, `agentsvc budgets
set`), else `AGENTSVC_DEFAULT_TOKEN_BUDGET`. Overrides live in the database and each process
caches them for `OVERRIDE_CACHE_S`: the replica that sets one applies it at once, every other
replica within that time.

Redis down (`BudgetStoreError`), counted in `agentsvc_budget_store_errors{policy}`:
- `AGENTSVC_BUDGET_FAIL_POLICY=closed` (default): an LLM call of a user with a budget is
  not made (the run fails `llm_unavailable`), a new request of theirs answers 503;
- `open`: both go through, and the call's usage is still added if Redis answers by then.
Users without a budget (None) are never refused for it (counted as `open`).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

from app.bus.budgets import KEEP_AFTER_S, BudgetLedger, BudgetStoreError, Hold, build_budget_ledger
from app.bus.writes import RedisWrites, watch
from app.errors import NotFound, OverBudget, ServiceUnavailable
from app.guards.budget import (
    BudgetExhausted,
    BudgetUnavailable,
    BudgetWindow,
    TokenBudget,
    WindowUsage,
)
from app.observability.metrics import BUDGET_REJECTIONS, BUDGET_STORE_ERRORS
from app.services.auth import Principal
from app.settings import Settings
from app.store import budgets as budget_store
from app.store.budgets import OverrideRecord
from app.store.db import Database

log = logging.getLogger(__name__)

OVERRIDE_CACHE_S = 5.0
"""How long a process trusts its copy of a user's override."""
_CACHE_SIZE = 10_000


@dataclass(frozen=True, kw_only=True)
class UsageReport:
    """A user's budget and what they used of it in the current window."""

    user_id: str
    budget: TokenBudget
    override: OverrideRecord | None
    """None: the user has the default budget."""
    window: BudgetWindow
    usage: WindowUsage

    @property
    def remaining_tokens(self) -> int | None:
        limit = self.budget.tokens_per_window
        if limit is None:
            return None
        return max(0, limit - self.usage.used_tokens - self.usage.reserved_tokens)

    @property
    def exhausted(self) -> bool:
        return self.budget.is_spent(self.usage)


class BudgetKeeper:
    """Reserves and settles LLM calls (`app.llm.budgeted.Budgets`), admits new requests,
    reports usage and keeps overrides. One per process."""

    def __init__(
        self,
        *,
        ledger: BudgetLedger,
        db: Database,
        default_tokens: int | None,
        window_s: int,
        fail_open: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ledger = ledger
        self._db = db
        self._default = default_tokens
        self._window_s = window_s
        self._fail_open = fail_open
        self._clock = clock
        self._policy: Literal["open", "closed"] = "open" if fail_open else "closed"
        self._cache: OrderedDict[str, tuple[OverrideRecord | None, float]] = OrderedDict()

    @classmethod
    def from_settings(
        cls, settings: Settings, db: Database, writes: RedisWrites | None
    ) -> BudgetKeeper:
        """`writes`: the process's queued writes to Redis (None: no Redis)."""
        return cls(
            ledger=build_budget_ledger(writes, timeout_s=settings.redis_timeout_s),
            db=db,
            default_tokens=settings.default_token_budget,
            window_s=settings.budget_window_s,
            fail_open=settings.budget_fail_policy == "open",
        )

    async def budget_for(self, user_id: str) -> tuple[TokenBudget, OverrideRecord | None]:
        """The user's budget and the override it comes from (None: the default)."""
        now = time.monotonic()
        cached = self._cache.get(user_id)
        if cached is not None and cached[1] > now:
            override = cached[0]
        else:
            async with self._db.read() as conn:
                override = await budget_store.get_override(conn, user_id)
            self._cache[user_id] = (override, now + OVERRIDE_CACHE_S)
            self._cache.move_to_end(user_id)
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        tokens = self._default if override is None else override.tokens_per_window
        return TokenBudget(tokens_per_window=tokens, window_s=self._window_s), override

    async def reserve(self, user_id: str, tokens: int, *, hold_s: float) -> Hold:
        """Hold the worst case of one call for up to `hold_s`; raise `BudgetExhausted` when
        it does not fit, `BudgetUnavailable` when Redis is down and budgets fail closed."""
        budget, _ = await self.budget_for(user_id)
        now = self._clock()
        window = budget.window(now)
        hold = Hold(
            user_id=user_id,
            window_start=window.start,
            tokens=tokens,
            expire_at=max(window.reset_at, int(now + hold_s)) + KEEP_AFTER_S,
        )
        try:
            reservation = await self._ledger.reserve(
                hold, limit=budget.tokens_per_window, now=now, lapse_at=now + hold_s
            )
        except BudgetStoreError as exc:
            if self._refuses_when_down(budget):
                raise BudgetUnavailable(
                    "the budget store is unreachable and budgets fail closed: the call was not made"
                ) from exc
            return replace(hold, hold_id="", tokens=0)  # untracked: settling adds the usage
        if not reservation.granted:
            BUDGET_REJECTIONS.labels(reason="run").inc()
            raise budget.refusal(tokens, reservation.usage, now)
        return hold

    def settle(self, hold: Hold, *, tokens: int, cost_usd: float) -> None:
        """Count the call's real usage and free its hold, without waiting for the store. A
        store error is logged and counted; the hold then lapses by itself."""

        def failed(exc: BaseException) -> None:
            BUDGET_STORE_ERRORS.labels(policy=self._policy).inc()
            log.warning("budget: %d tokens of %s not counted: %s", tokens, hold.user_id, exc)

        watch(self._ledger.settle(hold, tokens=tokens, cost_usd=cost_usd), failed)

    async def check_open(self, user_id: str) -> None:
        """Before a new run: 429 `OverBudget` (Retry-After: the window's reset) when the
        user's window is spent; 503 when Redis is down and budgets fail closed."""
        budget, _ = await self.budget_for(user_id)
        if budget.tokens_per_window is None:
            return
        now = self._clock()
        try:
            usage = await self._ledger.read(
                user_id=user_id, window_start=budget.window(now).start, now=now
            )
        except BudgetStoreError as exc:
            if self._refuses_when_down(budget):
                raise ServiceUnavailable(
                    "the budget store is unreachable and budgets fail closed"
                ) from exc
            return
        try:
            budget.check_open(usage, now)
        except BudgetExhausted as exc:
            BUDGET_REJECTIONS.labels(reason="request").inc()
            raise OverBudget(str(exc), retry_after_s=exc.retry_after_s) from None

    def _refuses_when_down(self, budget: TokenBudget) -> bool:
        """Count a store error under the policy that applies; whether to refuse."""
        refuse = budget.tokens_per_window is not None and not self._fail_open
        BUDGET_STORE_ERRORS.labels(policy="closed" if refuse else "open").inc()
        log.warning("budget store unreachable; failing %s", "closed" if refuse else "open")
        return refuse

    async def usage(self, user_id: str) -> UsageReport:
        """The user's budget and usage in the current window (503 when Redis is down)."""
        budget, override = await self.budget_for(user_id)
        now = self._clock()
        window = budget.window(now)
        try:
            usage = await self._ledger.read(user_id=user_id, window_start=window.start, now=now)
        except BudgetStoreError as exc:
            log.warning("budget usage not read: %s", exc)
            raise ServiceUnavailable("the budget store is unreachable") from exc
        return UsageReport(
            user_id=user_id, budget=budget, override=override, window=window, usage=usage
        )

    async def set_override(self, user_id: str, tokens: int | None, *, by: str) -> None:
        """Give the user their own budget (None: unlimited); effective here at once."""
        await set_override(self._db, user_id, tokens, by=by)
        self._cache.pop(user_id, None)

    async def clear_override(self, user_id: str) -> None:
        """Back to the default budget; 404 when the user had no override."""
        async with self._db.transaction() as conn:
            found = await budget_store.delete_override(conn, user_id)
        self._cache.pop(user_id, None)
        if not found:
            raise NotFound(f"user {user_id} has no budget override")


async def set_override(db: Database, user_id: str, tokens: int | None, *, by: str) -> None:
    """Store the user's own budget (None: unlimited); replicas apply it within
    `OVERRIDE_CACHE_S`."""
    record = OverrideRecord(
        user_id=user_id, tokens_per_window=tokens, updated_at=datetime.now(UTC), updated_by=by
    )
    async with db.transaction() as conn:
        await budget_store.put_override(conn, record)


ADMINS_ONLY = "only admins manage budgets"


async def read_budget(keeper: BudgetKeeper, principal: Principal, user_id: str) -> UsageReport:
    """A user's budget and usage (admins)."""
    principal.require_admin(ADMINS_ONLY)
    return await keeper.usage(user_id)


async def put_budget(
    keeper: BudgetKeeper, principal: Principal, user_id: str, tokens: int | None
) -> UsageReport:
    """Set a user's own budget (admins); None: unlimited."""
    principal.require_admin(ADMINS_ONLY)
    await keeper.set_override(user_id, tokens, by=principal.user_id)
    return await keeper.usage(user_id)


async def delete_budget(keeper: BudgetKeeper, principal: Principal, user_id: str) -> UsageReport:
    """Put a user back on the default budget (admins); 404 without an override."""
    principal.require_admin(ADMINS_ONLY)
    await keeper.clear_override(user_id)
    return await keeper.usage(user_id)
