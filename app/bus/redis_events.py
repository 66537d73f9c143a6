"""The live event bus over Redis: any API replica can stream any run.

Per run, a capped stream `agentsvc:events:<run>` holds recent events for catch-up
(entry id `<seq>-1`, so Redis itself refuses a sequence twice) and a pub/sub
channel of the same name pushes them to the processes that have readers. One
Lua script appends and publishes in one round trip. Each process has one pub/sub
connection, driven by one task that also (un)subscribes, so commands and reads
never interleave on it.

Redis down: publishing fails (the runner logs it and goes on: the database is the
log), readers fall back to the database through their nudges and the backstop poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

import redis.asyncio as redis
from redis.exceptions import RedisError

from app.bus.events import Fanout, Subscription, decode_events, encode_event
from app.runner.events import RunEvent

log = logging.getLogger(__name__)

PREFIX = "agentsvc:events:"
_DRAIN_MAX = 10_000
"""Buffered pub/sub messages handled per turn of the listener at most."""

# KEYS[1] the run's stream; ARGV: maxlen, ttl seconds, then (seq, event) pairs.
# An entry whose id is not above the stream's top is refused by XADD and not published.
_PUBLISH = """
local sent = {}
for i = 3, #ARGV, 2 do
  local ok = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], ARGV[i] .. '-1', 'e', ARGV[i + 1])
  if type(ok) == 'string' then sent[#sent + 1] = ARGV[i + 1] end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
if #sent > 0 then
  redis.call('PUBLISH', KEYS[1], '[' .. table.concat(sent, ',') .. ']')
end
return #sent
"""


def _key(run_id: str) -> str:
    return PREFIX + run_id


def _entries_to_events(run_id: str, entries: object) -> list[RunEvent]:
    """Events from XRANGE entries `[(id, {b"e": event}), …]`."""
    assert isinstance(entries, list)
    raw = b",".join(fields[b"e"] for _, fields in entries)
    return decode_events(run_id, b"[" + raw + b"]")


class RedisBus:
    """Publish through Redis; deliver to this process's readers from one pub/sub link."""

    def __init__(
        self,
        client: redis.Redis,
        url: str,
        *,
        timeout_s: float,
        retention_s: float,
        max_events: int = 10_000,
        poll_s: float = 0.05,
    ) -> None:
        """`client`: the process's Redis client (short timeouts) for publishing and reads;
        the subscription gets a connection of its own to `url`."""
        self.fanout = Fanout()
        self._client = client
        # The listener's own connection: reads wait as long as they like.
        self._listen_client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, health_check_interval=30
        )
        self._pubsub = self._listen_client.pubsub()
        self._publish = self._client.register_script(_PUBLISH)
        self._retention_s = int(max(1, retention_s))
        self._max_events = max_events
        self._poll_s = poll_s
        self._wanted: set[str] = set()
        """Runs this process has readers of."""
        self._requested: set[str] = set()
        """Runs whose SUBSCRIBE was sent and not confirmed yet."""
        self._listening: set[str] = set()
        """Runs whose subscription Redis confirmed."""
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def publish(self, events: Sequence[RunEvent]) -> None:
        if not events:
            return
        args: list[str | bytes | int] = [self._max_events, self._retention_s]
        for event in events:
            args += [event.seq, encode_event(event)]
        await self._publish(keys=[_key(events[0].run_id)], args=args)

    async def recent(self, run_id: str, after: int) -> list[RunEvent]:
        start = "-" if after < 0 else f"{after + 1}-0"
        entries = await self._client.xrange(_key(run_id), min=start, max="+")
        return _entries_to_events(run_id, entries)

    async def last_seq(self, run_id: str) -> int | None:
        entries = await self._client.xrevrange(_key(run_id), count=1)
        if not entries:
            return None
        entry_id = entries[0][0]
        assert isinstance(entry_id, bytes)
        return int(entry_id.split(b"-")[0])

    @contextlib.asynccontextmanager
    async def subscribe(self, run_id: str) -> AsyncIterator[Subscription]:
        sub = Subscription(run_id)
        self.fanout.add(sub)
        if run_id in self._listening:
            sub.mark_ready()
        else:
            self._want(run_id)
        try:
            yield sub
        finally:
            if self.fanout.remove(sub):
                self._wanted.discard(run_id)
                self._changed.set()

    def _want(self, run_id: str) -> None:
        self._wanted.add(run_id)
        self._changed.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        """The one task that talks to the pub/sub connection."""
        while True:
            try:
                await self._sync_channels()
                if not self._pubsub.subscribed:
                    await self._changed.wait()
                    continue
                message = await self._pubsub.get_message(timeout=self._poll_s)
                # Then everything already buffered, so confirmations never queue up.
                for _ in range(_DRAIN_MAX):
                    if message is None:
                        break
                    self._handle(message)
                    message = await self._pubsub.get_message(timeout=0)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError):
                # Readers that missed events meanwhile are found by the streams' backstop,
                # one batched query, rather than all reading the log at once.
                log.warning("event bus: Redis subscription failed; retrying", exc_info=True)
                self._listening.clear()
                self._requested.clear()
                self._changed.set()
                await asyncio.sleep(1.0)

    async def _sync_channels(self) -> None:
        """Subscribe what readers want and nobody asked for yet; drop what nobody wants."""
        if not self._changed.is_set():
            return
        self._changed.clear()
        add = self._wanted - self._listening - self._requested
        drop = (self._listening | self._requested) - self._wanted
        if add:
            self._requested |= add
            await self._pubsub.subscribe(*(_key(r) for r in add))
        if drop:
            self._listening -= drop
            self._requested -= drop
            await self._pubsub.unsubscribe(*(_key(r) for r in drop))

    def _handle(self, message: dict[str, object]) -> None:
        channel = message["channel"]
        assert isinstance(channel, bytes)
        run_id = channel.decode()[len(PREFIX) :]
        kind = message["type"]
        if kind == "subscribe":
            self._requested.discard(run_id)
            self._listening.add(run_id)
            if run_id not in self._wanted:
                self._changed.set()  # its readers left meanwhile: unsubscribe
            for sub in self.fanout.readers(run_id):
                sub.mark_ready()
        elif kind == "message":
            data = message["data"]
            assert isinstance(data, bytes)
            self.fanout.deliver(run_id, decode_events(run_id, data))

    async def ping(self) -> None:
        await self._client.ping()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._listen_client.aclose()
