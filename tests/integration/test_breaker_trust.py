"""A closed breaker answer trusted for a while, over real Redis: two replicas' breakers, each
with its own client; the one that trusts sees the other's opening once its window ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as redis

from app.bus.breakers import LocalBreakerStore, RedisBreakerStore
from app.jobs.resilience import build_breakers
from app.llm.breaker import BreakerPolicy, Breakers, CircuitOpen
from app.settings import Settings
from tests.integration.test_resilience import TEST_REDIS, flush_test_redis

POLICY = BreakerPolicy(failure_threshold=2, window_s=60, cooldown_s=60, half_open_probes=1)
TARGET = "llm:trust/model"


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def clients() -> AsyncIterator[tuple[redis.Redis, redis.Redis]]:
    await flush_test_redis()
    a, b = redis.Redis.from_url(TEST_REDIS), redis.Redis.from_url(TEST_REDIS)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


def shared(client: redis.Redis, clock: Clock, *, trust_s: float) -> Breakers:
    store = RedisBreakerStore(client, fallback=LocalBreakerStore())
    return Breakers(store, POLICY, trust_closed_s=trust_s, clock=clock)


async def test_a_trusting_replica_sees_an_opening_elsewhere_within_its_window(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    clock = Clock()
    here = shared(clients[0], clock, trust_s=1.0)
    there = shared(clients[1], clock, trust_s=1.0)
    assert await here.admit(TARGET) is False
    assert await there.admit(TARGET) is False
    for _ in range(2):
        await there.record(TARGET, ok=False, probe=False)
    with pytest.raises(CircuitOpen):  # the replica that opened it knows at once
        await there.admit(TARGET)
    clock.now += 0.5
    assert await here.admit(TARGET) is False  # the other one within its trust window
    clock.now += 0.5
    with pytest.raises(CircuitOpen):
        await here.admit(TARGET)


async def test_zero_trust_sees_an_opening_elsewhere_at_once(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    clock = Clock()
    here = shared(clients[0], clock, trust_s=0.0)
    there = shared(clients[1], clock, trust_s=0.0)
    assert await here.admit(TARGET) is False
    for _ in range(2):
        await there.record(TARGET, ok=False, probe=False)
    with pytest.raises(CircuitOpen):
        await here.admit(TARGET)


async def test_only_shared_breakers_trust_a_closed_answer(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    settings = Settings.model_validate({"breaker_trust_closed_s": 0.25})
    assert build_breakers(settings, clients[0]).trust_closed_s == 0.25
    assert build_breakers(settings, None).trust_closed_s == 0.0  # exact, and no round trip
