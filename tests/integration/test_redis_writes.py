"""Queued writes (`app.bus.writes`) against real Redis: one pipeline per loop turn, replies,
failures, a lost script, and nothing left behind at close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
from prometheus_client import REGISTRY

from app.bus.budgets import Hold, RedisBudgetLedger
from app.bus.cache import PREFIX, RedisResponseStore
from app.bus.writes import RedisWrites, WriteFailed, watch
from app.services.budgets import BudgetKeeper
from tests.support.cost import TEST_REDIS, closed_port, flush_test_redis


@pytest.fixture
async def client() -> AsyncIterator[redis.Redis]:
    await flush_test_redis()
    client = redis.Redis.from_url(TEST_REDIS, socket_timeout=1)
    yield client
    await client.aclose()


async def test_writes_queued_in_one_turn_leave_in_one_pipeline(client: redis.Redis) -> None:
    writes = RedisWrites(client, deadline_s=2)
    # Three writes in one turn: the last sees the name the first gave its connection, so
    # they went over one connection, in order, in one round trip.
    named = writes.send("CLIENT", "SETNAME", "batched")
    stored = writes.send("SET", "k", "v")
    name = writes.send("CLIENT", "GETNAME")
    assert not named.done()  # queued: nothing has left yet
    assert [await named, await stored, await name] == [b"OK", True, b"batched"]
    assert await client.get("k") == b"v"
    await writes.aclose()


async def test_a_failed_write_fails_alone_and_close_sends_what_is_queued(
    client: redis.Redis,
) -> None:
    writes = RedisWrites(client, deadline_s=2)
    await client.set("text", "not a number")
    bad = writes.send("INCR", "text")
    good = writes.send("INCR", "counter")
    await writes.aclose()  # nothing awaited them: close still sends them
    assert good.result() == 1
    with pytest.raises(WriteFailed, match="not an integer"):
        bad.result()


async def test_writes_to_an_unreachable_redis_fail_within_the_deadline() -> None:
    down = redis.Redis(host="127.0.0.1", port=closed_port(), socket_connect_timeout=0.1)
    writes = RedisWrites(down, deadline_s=0.5)
    failures: list[BaseException] = []
    watch(writes.send("SET", "k", "v"), failures.append)
    async with asyncio.timeout(2):
        await writes.aclose()
        await asyncio.sleep(0)  # the done callback runs at the next turn
    assert len(failures) == 1
    assert isinstance(failures[0], WriteFailed)
    await down.aclose()


async def test_a_settle_whose_script_redis_lost_is_loaded_and_sent_again(
    client: redis.Redis,
) -> None:
    writes = RedisWrites(client, deadline_s=2)
    ledger = RedisBudgetLedger(client, writes, deadline_s=2)
    hold = Hold(user_id="u", window_start=0, tokens=100, expire_at=2_000_000_000)
    assert (await ledger.reserve(hold, limit=1000, now=0, lapse_at=60)).granted
    await client.script_flush()  # as after a restart of Redis
    await ledger.settle(hold, tokens=40, cost_usd=0.5)
    usage = await ledger.read(user_id="u", window_start=0, now=1)
    assert (usage.used_tokens, usage.reserved_tokens, usage.cost_usd) == (40, 0, 0.5)


async def test_a_settle_and_a_cache_store_of_one_call_share_a_pipeline(
    client: redis.Redis,
) -> None:
    writes = RedisWrites(client, deadline_s=2)
    ledger = RedisBudgetLedger(client, writes, deadline_s=2)
    store = RedisResponseStore(client, writes)
    hold = Hold(user_id="u", window_start=0, tokens=100, expire_at=2_000_000_000)
    assert (await ledger.reserve(hold, limit=1000, now=0, lapse_at=60)).granted
    # What BudgetedModel and CachedModel queue after one call, between two name commands.
    writes.send("CLIENT", "SETNAME", "one-trip")
    settled = ledger.settle(hold, tokens=10, cost_usd=0.0)
    stored = store.put("answer", b"{}", ttl_s=60)
    assert await writes.send("CLIENT", "GETNAME") == b"one-trip"
    await asyncio.gather(settled, stored)
    usage = await ledger.read(user_id="u", window_start=0, now=1)
    assert (usage.used_tokens, usage.reserved_tokens) == (10, 0)
    assert await client.get(PREFIX + "answer") == b"{}"
    assert 0 < await client.pttl(PREFIX + "answer") <= 60_000


async def test_a_settle_that_fails_is_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = redis.Redis(host="127.0.0.1", port=closed_port(), socket_connect_timeout=0.1)
    writes = RedisWrites(down, deadline_s=0.5)
    keeper = BudgetKeeper(
        ledger=RedisBudgetLedger(down, writes, deadline_s=0.5),
        db=None,  # type: ignore[arg-type]  # settling never reads the database
        default_tokens=1000,
        window_s=3600,
        fail_open=False,
    )
    errors = "agentsvc_budget_store_errors_total"
    before = REGISTRY.get_sample_value(errors, {"policy": "closed"}) or 0.0
    hold = Hold(user_id="u", window_start=0, tokens=100, expire_at=2_000_000_000)
    keeper.settle(hold, tokens=10, cost_usd=0.0)  # returns at once, whatever Redis does
    await writes.aclose()
    await asyncio.sleep(0)
    assert (REGISTRY.get_sample_value(errors, {"policy": "closed"}) or 0.0) == before + 1
    assert "10 tokens of u not counted" in caplog.text
    await down.aclose()
