"""Request rate limits per API key: GCRA, in Redis (every replica) or this process.

GCRA (the generic cell rate algorithm) keeps one number per key, the theoretical arrival
time (TAT) of the next request. With `per_minute` = N, each request advances it by 60/N
seconds; a request is refused when that would put the TAT more than 60 s ahead of now.
So a key may send N requests at once and then one every 60/N seconds: a bucket of N
refilled at N per minute, with no fixed-window burst at the minute boundary.

The Redis script reads the server's clock, so replicas with skewed clocks agree. Errors are
not handled here: `RateStoreError` says the store did not answer, and the caller decides
(`app.services.ratelimit` lets the request through).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.bus.redis_client import call_deadline_s

PREFIX = "agentsvc:rate:"
PERIOD_S = 60.0
EPSILON_S = 1e-6
"""Rounding slack: N requests at once must fit N x (60/N) seconds."""

# KEYS[1] the key's TAT. ARGV: emission interval, period (both seconds).
# Returns '0' when allowed, else the seconds to wait, as a string (Lua numbers truncate).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local next_tat = tat + interval
local wait = next_tat - period - now
if wait > 1e-6 then return tostring(wait) end
redis.call('SET', KEYS[1], tostring(next_tat), 'PX', math.ceil((next_tat - now) * 1000))
return '0'
"""


class RateStoreError(Exception):
    """The rate-limit store did not answer (in time)."""


class RateLimiter(Protocol):
    async def acquire(self, key: str, *, per_minute: int) -> float:
        """Count one request of `key` (> 0 per minute): 0 when allowed, else the seconds
        until one would be."""
        ...


class RedisRateLimiter:
    """GCRA in one Lua script per request, bounded by `deadline_s`."""

    def __init__(self, redis: Redis, *, deadline_s: float) -> None:
        self._script = redis.register_script(_ACQUIRE)
        self._deadline_s = deadline_s

    async def acquire(self, key: str, *, per_minute: int) -> float:
        try:
            async with asyncio.timeout(self._deadline_s):
                reply = await self._script(
                    keys=[PREFIX + key], args=[PERIOD_S / per_minute, PERIOD_S]
                )
        except (RedisError, OSError, TimeoutError) as exc:
            raise RateStoreError(f"rate-limit store: {type(exc).__name__}: {exc}") from exc
        return float(reply.decode() if isinstance(reply, bytes) else reply)


class InProcessRateLimiter:
    """GCRA in this process (no Redis), keeping the `max_keys` most recent keys."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000
    ) -> None:
        self._clock = clock
        self._tat: OrderedDict[str, float] = OrderedDict()
        self._max = max_keys

    async def acquire(self, key: str, *, per_minute: int) -> float:
        now = self._clock()
        next_tat = max(self._tat.get(key, now), now) + PERIOD_S / per_minute
        wait = next_tat - PERIOD_S - now
        if wait > EPSILON_S:
            return wait
        self._tat[key] = next_tat
        self._tat.move_to_end(key)
        while len(self._tat) > self._max:
            self._tat.popitem(last=False)
        return 0.0


def build_rate_limiter(redis: Redis | None, *, timeout_s: float) -> RateLimiter:
    """Redis when configured, else this process's limiter."""
    if redis is None:
        return InProcessRateLimiter()
    return RedisRateLimiter(redis, deadline_s=call_deadline_s(timeout_s))
