"""Writes whose caller needs no answer before it moves on, sent together.

After an LLM call the budget settles its hold and the prompt cache stores the answer: two
writes nobody waits for. Each is queued when it is made and every write queued in the same
turn of the event loop goes to Redis in one pipeline (one round trip, no transaction), so a
cache miss costs three round trips instead of four, and concurrent runs share pipelines.
A command's own round trip costs this process far more CPU (redis-py's packing, pool
checkout, parsing) than Redis spends on it.

A queued write is a future of its reply: `await` it to wait, or hand it to `watch` to have
its failure reported without waiting. `aclose` sends what is queued and waits for
every write in flight (the lifespan calls it before the Redis client closes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError
from redis.typing import EncodableT


class WriteFailed(Exception):
    """Redis did not take a queued write (in time)."""


@dataclass(slots=True)
class _Write:
    args: tuple[EncodableT, ...]
    script: bytes | None
    """For an EVALSHA: the script, loaded and sent again if Redis lost it."""
    reply: asyncio.Future[object] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class RedisWrites:
    """Queued writes to one Redis client, sent in one pipeline per turn of the loop."""

    def __init__(self, redis: Redis, *, deadline_s: float) -> None:
        """`deadline_s`: the most a pipeline may take before its writes count as failed."""
        self.redis = redis
        """The client the writes go to (the stores that queue writes read through it)."""
        self._redis = redis
        self._deadline_s = deadline_s
        self._queued: list[_Write] = []
        self._flushes: set[asyncio.Task[None]] = set()

    def send(self, *args: EncodableT, script: bytes | None = None) -> asyncio.Future[object]:
        """Queue one command; it leaves with the others queued in this turn of the loop.
        The future holds its reply, or `WriteFailed`."""
        write = _Write(args, script)
        self._queued.append(write)
        if len(self._queued) == 1:
            # A task's first step runs at the loop's next turn: what is queued until then
            # goes with it.
            task = asyncio.get_running_loop().create_task(self._flush())
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
        return write.reply

    async def _flush(self) -> None:
        batch, self._queued = self._queued, []
        pipe = self._redis.pipeline(transaction=False)
        for write in batch:
            pipe.execute_command(*write.args)
        try:
            async with asyncio.timeout(self._deadline_s):
                replies = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError, TimeoutError) as exc:
            for write in batch:
                _fail(write, exc)
            return
        for write, reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError) and write.script is not None:
                await self._resend(write)
            elif isinstance(reply, Exception):
                _fail(write, reply)
            else:
                _answer(write, reply)

    async def _resend(self, write: _Write) -> None:
        """Redis lost the script (restarted, flushed): load it and send the write alone."""
        assert write.script is not None
        try:
            async with asyncio.timeout(self._deadline_s):
                await self._redis.script_load(write.script)
                pipe = self._redis.pipeline(transaction=False)
                pipe.execute_command(*write.args)
                (reply,) = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            _fail(write, exc)
            return
        _answer(write, reply)

    async def aclose(self) -> None:
        """Send what is queued and wait until every write has its answer."""
        while self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)


def _answer(write: _Write, reply: object) -> None:
    if not write.reply.done():  # done: whoever awaited it was cancelled
        write.reply.set_result(reply)


def _fail(write: _Write, exc: BaseException) -> None:
    if not write.reply.done():
        write.reply.set_exception(WriteFailed(f"{type(exc).__name__}: {exc}"))


def watch(pending: asyncio.Future[object], on_error: Callable[[BaseException], None]) -> None:
    """Let `pending` finish without waiting for it; `on_error` hears of its failure."""
    pending.add_done_callback(lambda future: _report(future, on_error))


def _report(future: asyncio.Future[object], on_error: Callable[[BaseException], None]) -> None:
    if future.cancelled():
        return
    exc = future.exception()
    if exc is not None:
        on_error(exc)


def done() -> asyncio.Future[object]:
    """A write that already happened (the in-process stand-ins)."""
    future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future
