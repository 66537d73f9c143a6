"""The live event bus: a run's events, as they happen, to every process that streams it.

The database is the run's log; the bus is the fast path, and the only carrier of
`llm.delta` events until the call that produced them commits. Each process keeps
its readers in one `Fanout` and listens once per run, whatever the number of
readers. Two implementations: Redis (a capped stream per run for catch-up, plus a
pub/sub channel per run for the push) and in-process (one process, no Redis).
A reader never trusts the bus alone: `app.services.streams` fills every gap from
the stream's recent entries and then from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import orjson

from app.runner.events import EventType, RunEvent

log = logging.getLogger(__name__)


def encode_event(event: RunEvent) -> bytes:
    """The bus's wire form of an event (its run is the key or channel it travels on)."""
    return orjson.dumps({"s": event.seq, "t": event.type.value, "d": event.data})


def decode_events(run_id: str, raw: bytes | str) -> list[RunEvent]:
    """Events from a JSON array of wire forms."""
    return [
        RunEvent(run_id, item["s"], EventType(item["t"]), item["d"]) for item in orjson.loads(raw)
    ]


class Subscription:
    """One reader's inbox for one run: live events and nudges, taken in batches.

    The inbox is bounded: a reader that falls behind loses live events (and is told,
    through `overflowed`) and catches up from the log instead of growing memory.

    A process holds one per open stream, thousands of them: a list and a future made only
    while the reader waits, not a deque and two asyncio.Events (0.7 KB each, empty)."""

    __slots__ = (
        "_events",
        "_timer",
        "_timer_at",
        "_waiter",
        "_woken",
        "cursor",
        "limit",
        "nudged",
        "overflowed",
        "ready",
        "run_id",
        "seen_at",
    )

    def __init__(self, run_id: str, *, limit: int = 1000) -> None:
        self.run_id = run_id
        self.limit = limit
        self._events: list[RunEvent] = []
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._woken = False
        self.nudged = False
        """Set when events may have been missed: the reader should look in the log."""
        self.overflowed = False
        self.ready = False
        """Set once the bus delivers this run's events to the inbox (`mark_ready`)."""
        self.seen_at = time.monotonic()
        self.cursor = -1
        """The last sequence the reader has passed on (kept by the reader)."""

    def push(self, events: Sequence[RunEvent]) -> None:
        if len(self._events) + len(events) > self.limit:
            self._events.clear()
            self.overflowed = self.nudged = True
        else:
            self._events.extend(events)
        self._release()

    def nudge(self) -> None:
        self.nudged = True
        self._release()

    def wake(self) -> None:
        """Make a waiting `take_until` return now, empty-handed: the reader has something else to
        look at (its client left, the process is stopping)."""
        self._woken = True
        self._release()

    def mark_ready(self) -> None:
        """The bus now delivers this run's events to the inbox."""
        self.ready = True
        self._release()

    async def wait_ready(self, wait_s: float) -> None:
        """Wait up to `wait_s` for `mark_ready` (or anything else that wakes the reader)."""
        if not self.ready:
            await self._wait(asyncio.get_running_loop().time() + wait_s)

    async def take_until(self, deadline: float) -> tuple[list[RunEvent], bool]:
        """Wait until `deadline` (loop time) at most for something; the events and whether
        the reader was nudged (it must then consult the log). A reader that keeps its
        deadline over many wake-ups (its next ping) keeps one timer for all of them:
        making and cancelling one per wake-up was 5 % of fan-out CPU."""
        if not self._events and not self.nudged and not self._woken:
            await self._wait(deadline)
        self._woken = False
        events, self._events = self._events, []
        nudged, self.nudged = self.nudged, False
        if events:
            self.seen_at = time.monotonic()
        return events, nudged

    def close(self) -> None:
        """Drop the timer `take_until` leaves for the next wait (the reader is gone)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _wait(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        if deadline <= loop.time():
            return
        if self._timer is None or self._timer_at != deadline:
            self.close()
            self._timer = loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline
        waiter = self._waiter = loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _on_timer(self) -> None:
        self._timer = None
        self._release()

    def _release(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Fanout:
    """This process's subscriptions, by run."""

    def __init__(self) -> None:
        self._by_run: dict[str, set[Subscription]] = {}

    def add(self, sub: Subscription) -> bool:
        """Register; True when it is the run's first reader here."""
        subs = self._by_run.setdefault(sub.run_id, set())
        subs.add(sub)
        return len(subs) == 1

    def remove(self, sub: Subscription) -> bool:
        """Unregister; True when it was the run's last reader here."""
        subs = self._by_run.get(sub.run_id)
        if subs is None:
            return False
        subs.discard(sub)
        if subs:
            return False
        del self._by_run[sub.run_id]
        return True

    def deliver(self, run_id: str, events: Sequence[RunEvent]) -> None:
        for sub in self._by_run.get(run_id, ()):
            sub.push(events)

    def runs(self) -> list[str]:
        return list(self._by_run)

    def readers(self, run_id: str) -> list[Subscription]:
        return list(self._by_run.get(run_id, ()))

    def nudge_all(self) -> None:
        for subs in self._by_run.values():
            for sub in subs:
                sub.nudge()


class EventBus(Protocol):
    """What publishers (the runner) and readers (SSE) need from a live bus."""

    fanout: Fanout

    async def publish(self, events: Sequence[RunEvent]) -> None:
        """Offer events to every reader of their run, anywhere; never raises for a
        duplicate sequence (the first event with a sequence wins)."""

    async def recent(self, run_id: str, after: int) -> list[RunEvent]:
        """The events with a sequence above `after` that the bus still holds, in order."""

    async def last_seq(self, run_id: str) -> int | None:
        """The highest sequence the bus holds for the run, if any."""

    def subscribe(self, run_id: str) -> contextlib.AbstractAsyncContextManager[Subscription]:
        """An inbox of the run's live events from now on, until the context exits."""

    async def close(self) -> None: ...


class InProcessBus:
    """The bus of a single process: readers and runs share its memory."""

    def __init__(self, *, retention_s: float, max_events: int = 10_000) -> None:
        self.fanout = Fanout()
        self._retention_s = retention_s
        self._max_events = max_events
        self._logs: dict[str, deque[RunEvent]] = {}
        self._expires: dict[str, float] = {}
        self._swept_at = time.monotonic()

    async def publish(self, events: Sequence[RunEvent]) -> None:
        if not events:
            return
        run_id = events[0].run_id
        held = self._logs.setdefault(run_id, deque(maxlen=self._max_events))
        top = held[-1].seq if held else -1
        fresh = [e for e in events if e.seq > top]
        held.extend(fresh)
        now = time.monotonic()
        self._expires[run_id] = now + self._retention_s
        if fresh:
            self.fanout.deliver(run_id, fresh)
        if now - self._swept_at > 60:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        self._swept_at = now
        for run_id in [r for r, at in self._expires.items() if at < now]:
            self._logs.pop(run_id, None)
            del self._expires[run_id]

    async def recent(self, run_id: str, after: int) -> list[RunEvent]:
        return [e for e in self._logs.get(run_id, ()) if e.seq > after]

    async def last_seq(self, run_id: str) -> int | None:
        held = self._logs.get(run_id)
        return held[-1].seq if held else None

    @contextlib.asynccontextmanager
    async def subscribe(self, run_id: str) -> AsyncIterator[Subscription]:
        sub = Subscription(run_id)
        self.fanout.add(sub)
        sub.mark_ready()
        try:
            yield sub
        finally:
            self.fanout.remove(sub)

    async def close(self) -> None:
        self._logs.clear()
