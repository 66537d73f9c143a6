"""Token budget counters: reserve, settle and release atomically, in Redis or this process.

Per user and window, Redis holds (all under one hash tag, so a cluster keeps them together):

- `agentsvc:budget:{<user>:<window start>}` hash: `used`, `reserved`, `cost`, `exhausted`;
- `…:holds` hash: reservation id → tokens held;
- `…:due` sorted set: reservation id → the time it lapses.

Reserve is one Lua script: drop lapsed holds, check `used + reserved + tokens <= limit`, and
hold the tokens, in one round trip, so concurrent calls of one user can never hold more than
the budget. A hold lapses (its tokens are freed) when its process died before settling.
Settle frees the hold and adds the real usage and cost; release is a settle of nothing. A
settle is queued, not awaited by the call it settles: it leaves with the prompt cache's write
of the same answer in one pipeline (`app.bus.writes`). Until it lands the hold still counts,
so a late settle can only make a concurrent reservation more careful, never overshoot.
The keys expire an hour after the window (or the last hold) ends.

Errors are not handled here: `BudgetStoreError` says the store did not answer, and the
caller's policy decides (`app.services.budgets`). The in-process ledger has the same
semantics for one process (no Redis configured).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError
from redis.typing import EncodableT

from app.bus.redis_client import call_deadline_s
from app.bus.writes import RedisWrites, done
from app.guards.budget import WindowUsage

PREFIX = "agentsvc:budget:"
KEEP_AFTER_S = 3600
"""Counters outlive their window (and their last hold) by this, for late settles and reads."""
UNLIMITED = -1

_PURGE = """
local late = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])
for _, id in ipairs(late) do
  local t = tonumber(redis.call('HGET', KEYS[2], id) or '0')
  redis.call('HINCRBY', KEYS[1], 'reserved', -t)
  redis.call('HDEL', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
end
"""

# KEYS: totals, holds, due. ARGV: now, limit (-1: none), tokens, hold id, lapse time, expire at.
# Returns {granted, used, reserved} (reserved after the grant).
_RESERVE = (
    _PURGE
    + """
local used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local limit = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local granted = 0
if limit < 0 or used + reserved + tokens <= limit then
  redis.call('HINCRBY', KEYS[1], 'reserved', tokens)
  redis.call('HSET', KEYS[2], ARGV[4], tokens)
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])
  reserved = reserved + tokens
  granted = 1
elseif used + tokens > limit then
  local before = tonumber(redis.call('HGET', KEYS[1], 'exhausted') or '-1')
  if limit > before then redis.call('HSET', KEYS[1], 'exhausted', limit) end
end
for i = 1, 3 do redis.call('EXPIREAT', KEYS[i], ARGV[6]) end
return {granted, used, reserved}
"""
)

# KEYS: totals, holds, due. ARGV: hold id ('' for none), tokens used, cost, expire at.
_SETTLE = """
local t = redis.call('HGET', KEYS[2], ARGV[1])
if t then
  redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(t))
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
end
if tonumber(ARGV[2]) > 0 then redis.call('HINCRBY', KEYS[1], 'used', ARGV[2]) end
if tonumber(ARGV[3]) > 0 then redis.call('HINCRBYFLOAT', KEYS[1], 'cost', ARGV[3]) end
redis.call('EXPIREAT', KEYS[1], ARGV[4])
return 1
"""
_SETTLE_SRC = _SETTLE.encode()

# KEYS: totals, holds, due. ARGV: now. Returns {used, reserved, cost, exhausted}.
_READ = (
    _PURGE
    + """
local v = redis.call('HMGET', KEYS[1], 'used', 'reserved', 'cost', 'exhausted')
return {v[1] or '0', v[2] or '0', v[3] or '0', v[4] or '-1'}
"""
)


class BudgetStoreError(Exception):
    """The budget store did not answer (in time)."""


@dataclass(frozen=True, kw_only=True)
class Hold:
    """Tokens held for one call in flight, until it is settled or lapses."""

    user_id: str
    window_start: int
    tokens: int
    expire_at: int
    """When the window's counters may go (Unix seconds)."""
    hold_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    """Empty for an untracked call (nothing held; settling only adds its usage)."""


@dataclass(frozen=True, kw_only=True)
class Reservation:
    """The answer to a reservation, with the counters it saw (after the hold if granted)."""

    granted: bool
    usage: WindowUsage


class BudgetLedger(Protocol):
    """Where budgets are counted."""

    async def reserve(
        self, hold: Hold, *, limit: int | None, now: float, lapse_at: float
    ) -> Reservation:
        """Take `hold` if `used + reserved + tokens <= limit` (None: always), as one step; it
        lapses at `lapse_at`. A refusal that would have happened with nothing in flight marks
        the window exhausted under `limit`."""
        ...

    def settle(self, hold: Hold, *, tokens: int, cost_usd: float) -> asyncio.Future[object]:
        """Queue freeing the hold and adding the call's real usage (0, 0: a release); the
        future ends when it is done (`WriteFailed`: it was not)."""
        ...

    async def read(self, *, user_id: str, window_start: int, now: float) -> WindowUsage:
        """The window's counters (lapsed holds dropped)."""
        ...


def _keys(user_id: str, window_start: int) -> list[str]:
    base = f"{PREFIX}{{{user_id}:{window_start}}}"
    return [base, base + ":holds", base + ":due"]


def _usage(used: object, reserved: object, cost: object, exhausted: object) -> WindowUsage:
    mark = int(_text(exhausted))
    return WindowUsage(
        used_tokens=int(_text(used)),
        reserved_tokens=int(_text(reserved)),
        cost_usd=float(_text(cost)),
        exhausted_at=None if mark < 0 else mark,
    )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBudgetLedger:
    """Budgets in Redis, shared by every replica. Each call is one script, bounded by
    `deadline_s` whatever the client's own retries do; settles go out through `writes`."""

    def __init__(self, redis: Redis, writes: RedisWrites, *, deadline_s: float) -> None:
        self._deadline_s = deadline_s
        self._writes = writes
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._read = redis.register_script(_READ)

    async def _call(self, script: AsyncScript, keys: list[str], args: list[EncodableT]) -> object:
        try:
            async with asyncio.timeout(self._deadline_s):
                reply: object = await script(keys=keys, args=args)
                return reply
        except (RedisError, OSError, TimeoutError) as exc:
            raise BudgetStoreError(f"budget store: {type(exc).__name__}: {exc}") from exc

    async def reserve(
        self, hold: Hold, *, limit: int | None, now: float, lapse_at: float
    ) -> Reservation:
        limit_arg = UNLIMITED if limit is None else limit
        args: list[EncodableT] = [
            now,
            limit_arg,
            hold.tokens,
            hold.hold_id,
            lapse_at,
            hold.expire_at,
        ]
        reply = await self._call(self._reserve, _keys(hold.user_id, hold.window_start), args)
        assert isinstance(reply, list)
        granted, used, reserved = (int(_text(v)) for v in reply)
        return Reservation(
            granted=bool(granted), usage=WindowUsage(used_tokens=used, reserved_tokens=reserved)
        )

    def settle(self, hold: Hold, *, tokens: int, cost_usd: float) -> asyncio.Future[object]:
        keys = _keys(hold.user_id, hold.window_start)
        args = (hold.hold_id, tokens, repr(cost_usd), hold.expire_at)
        return self._writes.send(
            "EVALSHA", self._settle.sha, len(keys), *keys, *args, script=_SETTLE_SRC
        )

    async def read(self, *, user_id: str, window_start: int, now: float) -> WindowUsage:
        reply = await self._call(self._read, _keys(user_id, window_start), [now])
        assert isinstance(reply, list)
        return _usage(*reply)


@dataclass
class _Window:
    used: int = 0
    cost: float = 0.0
    exhausted: int | None = None
    holds: dict[str, tuple[int, float]] = field(default_factory=dict)
    """Hold id → (tokens, lapse time)."""

    def purge(self, now: float) -> None:
        for hold_id in [h for h, (_, lapse) in self.holds.items() if lapse <= now]:
            del self.holds[hold_id]

    def usage(self) -> WindowUsage:
        return WindowUsage(
            used_tokens=self.used,
            reserved_tokens=sum(t for t, _ in self.holds.values()),
            cost_usd=self.cost,
            exhausted_at=self.exhausted,
        )


class InProcessBudgetLedger:
    """Budgets in this process only (no Redis): the same semantics for one process. Nothing
    awaits between check and hold, so the event loop makes each step atomic. Keeps the
    `max_windows` most recently used (user, window) counters."""

    def __init__(self, *, max_windows: int = 100_000) -> None:
        self._windows: OrderedDict[tuple[str, int], _Window] = OrderedDict()
        self._max = max_windows

    def _window(self, user_id: str, window_start: int) -> _Window:
        key = (user_id, window_start)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window()
            while len(self._windows) > self._max:
                self._windows.popitem(last=False)
        self._windows.move_to_end(key)
        return window

    async def reserve(
        self, hold: Hold, *, limit: int | None, now: float, lapse_at: float
    ) -> Reservation:
        window = self._window(hold.user_id, hold.window_start)
        window.purge(now)
        before = window.usage()
        tokens = hold.tokens
        if limit is not None and before.used_tokens + before.reserved_tokens + tokens > limit:
            unfit = before.used_tokens + tokens > limit
            if unfit and (window.exhausted is None or window.exhausted < limit):
                window.exhausted = limit
            return Reservation(granted=False, usage=before)
        window.holds[hold.hold_id] = (tokens, lapse_at)
        return Reservation(granted=True, usage=window.usage())

    def settle(self, hold: Hold, *, tokens: int, cost_usd: float) -> asyncio.Future[object]:
        window = self._window(hold.user_id, hold.window_start)
        window.holds.pop(hold.hold_id, None)
        window.used += max(tokens, 0)
        window.cost += max(cost_usd, 0.0)
        return done()

    async def read(self, *, user_id: str, window_start: int, now: float) -> WindowUsage:
        window = self._window(user_id, window_start)
        window.purge(now)
        return window.usage()


def build_budget_ledger(writes: RedisWrites | None, *, timeout_s: float) -> BudgetLedger:
    """Redis when configured (`writes` carries the client), else this process's ledger."""
    if writes is None:
        return InProcessBudgetLedger()
    return RedisBudgetLedger(writes.redis, writes, deadline_s=call_deadline_s(timeout_s))
