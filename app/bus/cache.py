"""Where the prompt cache keeps answers: Redis (shared by every replica) or this process.

Both store opaque bytes under a key for a TTL. Errors are not handled here: the
cache wrapper (`app.llm.cache`) decides what a failure means (it skips the cache). A put is
queued, not awaited by the call that answered: in Redis it leaves with the budget's settle
of the same call in one pipeline (`app.bus.writes`).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from redis.asyncio import Redis

from app.bus.writes import RedisWrites, done

PREFIX = "agentsvc:pcache:"


class ResponseStore(Protocol):
    """Bytes by key, each for a limited time."""

    async def get(self, key: str) -> bytes | None:
        """The value stored under `key`, or None when absent or expired."""
        ...

    def put(self, key: str, value: bytes, *, ttl_s: float) -> asyncio.Future[object]:
        """Queue storing `value` under `key` for `ttl_s` seconds (> 0); the future ends
        when it is stored (`WriteFailed`: it was not)."""
        ...


class RedisResponseStore:
    """Keys `agentsvc:pcache:<key>` with a millisecond TTL; the client's short timeouts
    bound every call."""

    def __init__(self, redis: Redis, writes: RedisWrites) -> None:
        self._redis = redis
        self._writes = writes

    async def get(self, key: str) -> bytes | None:
        value = await self._redis.get(PREFIX + key)
        # The shared client does not decode responses: values come back as bytes.
        return value.encode() if isinstance(value, str) else value

    def put(self, key: str, value: bytes, *, ttl_s: float) -> asyncio.Future[object]:
        return self._writes.send("SET", PREFIX + key, value, "PX", max(1, round(ttl_s * 1000)))


class InProcessResponseStore:
    """The stand-in without Redis: this process only, at most `max_bytes` of values, the
    least recently used evicted first, expired ones dropped when met."""

    def __init__(
        self, *, max_bytes: int = 64 * 1024 * 1024, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._size = 0
        self._max_bytes = max_bytes
        self._clock = clock

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if self._clock() >= expires:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: bytes, *, ttl_s: float) -> asyncio.Future[object]:
        if len(value) <= self._max_bytes:
            self._drop(key)
            self._entries[key] = (self._clock() + ttl_s, value)
            self._size += len(value)
            while self._size > self._max_bytes:
                self._drop(next(iter(self._entries)))
        return done()

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._size -= len(entry[1])


def build_response_store(writes: RedisWrites | None) -> ResponseStore:
    """Redis when the service has one (`writes` carries the client); otherwise this
    process's own store."""
    return InProcessResponseStore() if writes is None else RedisResponseStore(writes.redis, writes)
