"""Where circuit breaker state lives: Redis, shared by every replica, or this process.

Redis: per target a hash `agentsvc:breaker:{<target>}` (state, opened_at, probes,
probe_at) and a sorted set `…:failures` of recent failure times, both expiring. Each
check and each transition is one Lua script, timed by the Redis server's clock, so
replicas agree without trusting their own clocks. The scripts follow the rules of
`app.llm.breaker.BreakerRecord`, which the in-process store runs directly.

Redis down: the shared store answers from this process's own breakers (each replica
then opens and closes on its own, as without Redis) and tries Redis again after a
few seconds; a call never waits more than the client's short timeout for Redis.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.llm.breaker import (
    BreakerPolicy,
    BreakerRecord,
    BreakerReport,
    BreakerSnapshot,
    BreakerState,
    Change,
    Verdict,
)

log = logging.getLogger(__name__)

PREFIX = "agentsvc:breaker:"
_STATES: tuple[BreakerState, ...] = ("closed", "half_open", "open")
T = TypeVar("T")

# Every script: KEYS[1] the hash, KEYS[2] the failure set; ARGV[1] now in ms ('' takes the
# Redis server's clock). States: 0 closed, 1 half-open, 2 open.
_NOW = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local state = tonumber(redis.call('HGET', KEYS[1], 'state') or '0')
"""

# ARGV: now, cooldown ms, probes, ttl ms → {admitted, probe, state, changed, retry in ms}
_ADMIT = (
    _NOW
    + """
if state == 0 then return {1, 0, 0, 0, 0} end
local cooldown = tonumber(ARGV[2])
local changed = 0
if state == 2 then
  local reopen = tonumber(redis.call('HGET', KEYS[1], 'opened_at')) + cooldown
  if now < reopen then return {0, 0, 2, 0, reopen - now} end
  changed = 1
  redis.call('HSET', KEYS[1], 'state', 1, 'probes', 0)
end
local probes = tonumber(redis.call('HGET', KEYS[1], 'probes') or '0')
local probe_at = tonumber(redis.call('HGET', KEYS[1], 'probe_at') or '0')
local stale = now >= probe_at + cooldown
if probes >= tonumber(ARGV[3]) and not stale then
  return {0, 0, 1, changed, probe_at + cooldown - now}
end
if stale then probes = 1 else probes = probes + 1 end
redis.call('HSET', KEYS[1], 'state', 1, 'probes', probes, 'probe_at', now)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1, 1, 1, changed, 0}
"""
)

# ARGV: now, threshold, window ms, ttl ms, a unique member → {state, changed}
_FAIL = (
    _NOW
    + """
if state == 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[3]))
  redis.call('ZADD', KEYS[2], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  if redis.call('ZCARD', KEYS[2]) < tonumber(ARGV[2]) then return {0, 0} end
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'state', 2, 'opened_at', now, 'probes', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if state == 2 then return {2, 0} end
return {2, 1}
"""
)

# ARGV: now → {state, changed}
_SUCCEED = (
    _NOW
    + """
if state ~= 1 then return {state, 0} end
redis.call('DEL', KEYS[1], KEYS[2])
return {0, 1}
"""
)

# ARGV: now, cooldown ms, window ms → {state, failures in window, retry in ms}
_PEEK = (
    _NOW
    + """
if state == 2 then
  local left = tonumber(redis.call('HGET', KEYS[1], 'opened_at')) + tonumber(ARGV[2]) - now
  if left > 0 then return {2, 0, left} end
  return {1, 0, 0}
end
return {state, redis.call('ZCOUNT', KEYS[2], '(' .. (now - tonumber(ARGV[3])), '+inf'), 0}
"""
)


class LocalBreakerStore:
    """This process's breakers (no Redis, or Redis down)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._records: dict[str, BreakerRecord] = {}

    def _record(self, target: str) -> BreakerRecord:
        return self._records.setdefault(target, BreakerRecord())

    async def admit(self, target: str, policy: BreakerPolicy) -> Verdict:
        return self._record(target).admit(policy, self._clock())

    async def fail(self, target: str, policy: BreakerPolicy) -> Change:
        return self._record(target).fail(policy, self._clock())

    async def succeed(self, target: str, policy: BreakerPolicy) -> Change:
        return self._record(target).succeed()

    async def snapshot(self, policy: BreakerPolicy) -> BreakerReport:
        now = self._clock()
        shots = [r.snapshot(t, policy, now) for t, r in self._records.items()]
        return BreakerReport(False, [s for s in shots if s.state != "closed" or s.failures])


def _keys(target: str) -> list[str]:
    base = f"{PREFIX}{{{target}}}"
    return [base, base + ":failures"]


def _ttl_ms(policy: BreakerPolicy) -> int:
    """Long enough to outlive a window and a cool-down; an idle breaker then forgets."""
    return int((policy.window_s + policy.cooldown_s) * 1000) + 60_000


def _ints(reply: object) -> list[int]:
    assert isinstance(reply, list)
    return [int(v) for v in reply]


class RedisBreakerStore:
    """Breakers shared by every replica through Redis; `fallback` answers while Redis
    does not, and Redis is tried again `retry_after_s` later."""

    def __init__(
        self,
        client: Redis,
        *,
        fallback: LocalBreakerStore,
        clock: Callable[[], float] | None = None,
        retry_after_s: float = 5.0,
    ) -> None:
        """`clock`: seconds for the scripts' "now" (tests); None: the Redis server's clock."""
        self._client = client
        self._fallback = fallback
        self._clock = clock
        self._retry_after_s = retry_after_s
        self._down_until = 0.0
        self._admit = client.register_script(_ADMIT)
        self._fail = client.register_script(_FAIL)
        self._succeed = client.register_script(_SUCCEED)
        self._peek = client.register_script(_PEEK)

    def _now(self) -> str:
        return "" if self._clock is None else str(int(self._clock() * 1000))

    async def _shared(
        self, call: Callable[[], Awaitable[T]], fallback: Callable[[], Awaitable[T]]
    ) -> T:
        if time.monotonic() < self._down_until:
            return await fallback()
        try:
            return await call()
        except (RedisError, OSError) as exc:
            log.warning(
                "breakers: Redis unreachable (%s); this process's own breakers answer for %g s",
                exc,
                self._retry_after_s,
            )
            self._down_until = time.monotonic() + self._retry_after_s
            return await fallback()

    async def admit(self, target: str, policy: BreakerPolicy) -> Verdict:
        async def shared() -> Verdict:
            args: list[str | int] = [
                self._now(),
                int(policy.cooldown_s * 1000),
                policy.half_open_probes,
                _ttl_ms(policy),
            ]
            reply = await self._admit(keys=_keys(target), args=args)
            admitted, probe, state, changed, retry_ms = _ints(reply)
            return Verdict(
                bool(admitted), bool(probe), _STATES[state], bool(changed), retry_ms / 1000
            )

        return await self._shared(shared, lambda: self._fallback.admit(target, policy))

    async def fail(self, target: str, policy: BreakerPolicy) -> Change:
        async def shared() -> Change:
            args: list[str | int] = [
                self._now(),
                policy.failure_threshold,
                int(policy.window_s * 1000),
                _ttl_ms(policy),
                uuid.uuid4().hex,
            ]
            state, changed = _ints(await self._fail(keys=_keys(target), args=args))
            return Change(_STATES[state], bool(changed))

        return await self._shared(shared, lambda: self._fallback.fail(target, policy))

    async def succeed(self, target: str, policy: BreakerPolicy) -> Change:
        async def shared() -> Change:
            state, changed = _ints(await self._succeed(keys=_keys(target), args=[self._now()]))
            return Change(_STATES[state], bool(changed))

        return await self._shared(shared, lambda: self._fallback.succeed(target, policy))

    async def snapshot(self, policy: BreakerPolicy) -> BreakerReport:
        async def shared() -> BreakerReport:
            targets: set[str] = set()
            async for raw in self._client.scan_iter(match=PREFIX + "{*", count=500):
                key = raw.decode() if isinstance(raw, bytes) else str(raw)
                targets.add(key[len(PREFIX) + 1 : key.rindex("}")])
            shots = []
            for target in targets:
                args: list[str | int] = [
                    self._now(),
                    int(policy.cooldown_s * 1000),
                    int(policy.window_s * 1000),
                ]
                state, failures, retry_ms = _ints(await self._peek(keys=_keys(target), args=args))
                shots.append(BreakerSnapshot(target, _STATES[state], failures, retry_ms / 1000))
            return BreakerReport(True, [s for s in shots if s.state != "closed" or s.failures])

        return await self._shared(shared, lambda: self._fallback.snapshot(policy))
