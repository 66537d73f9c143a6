"""One stream reader: its position in a run, the events it holds back while a gap is
filled, and its subscription to the live bus (see `app.services.streams`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

from app.bus.events import Subscription
from app.runner.events import TERMINAL_EVENTS, EventType, RunEvent
from app.store.events import READ_LIMIT, list_events, log_ends

if TYPE_CHECKING:
    from app.services.streams import StreamHub

log = logging.getLogger(__name__)

HOLD_LIMIT = 10_000
"""Out-of-order events a reader keeps while it fills a gap."""
IDLE_WAIT_S = 3600.0
"""How long an idle reader sleeps when nothing wakes it (pushes and nudges do)."""


class Follower:
    """One reader of one run, entered with `async with hub.reading(...)`: its position, the
    events it holds back until the gap before them closes, and its subscription.

    A plain object rather than an async generator, so the SSE response that drives it can
    also wait on its client and its ping deadline in the same task."""

    __slots__ = (
        "_after",
        "_entered",
        "_hub",
        "_run_id",
        "_started",
        "_max_s",
        "_until",
        "ended",
        "held",
        "sub",
    )

    def __init__(
        self, hub: StreamHub, run_id: uuid.UUID, *, after: int, max_s: float | None
    ) -> None:
        self._hub = hub
        self._run_id = run_id
        self._max_s = max_s
        self._until = math.inf
        """The end of its lifetime, in loop time."""
        self._started = False
        self._after = after
        self.sub: Subscription
        self._entered: contextlib.AbstractAsyncContextManager[Subscription] | None = None
        self.held: dict[int, RunEvent] = {}
        self.ended = False
        """The terminal event was passed on (or the run is gone)."""

    async def __aenter__(self) -> Follower:
        if self._max_s is not None:
            self._until = asyncio.get_running_loop().time() + self._max_s
        self._entered = self._hub.bus.subscribe(str(self._run_id))
        self.sub = await self._entered.__aenter__()
        self.sub.cursor = self._after
        # Subscribed before the log is read, so nothing published meanwhile passes us by.
        await self.sub.wait_ready(self._hub.poll_s)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._entered is not None:
            self.sub.close()
            await self._entered.__aexit__(None, None, None)

    @property
    def done(self) -> bool:
        """Nothing more to pass on: the run ended, the reader's lifetime is over, or the
        process is stopping."""
        return self.ended or self._hub.closing or asyncio.get_running_loop().time() >= self._until

    def wake(self) -> None:
        """Make a waiting `next` return now (its client left, say)."""
        self.sub.wake()

    async def next(self, until: float = math.inf) -> list[RunEvent]:
        """The events that now follow the last one passed on, in order; waits until `until`
        (loop time) at most for some, less while a gap is open or when the lifetime ends
        sooner. Empty when none came."""
        if not self._started:
            self._started = True
            return await self._catch_up()
        # An idle reader sleeps until a push or a nudge from the backstop (or its
        # deadline); only one waiting for a gap to close looks again soon.
        until = min(until, self._until)
        if self.gap() is not None:
            until = min(until, asyncio.get_running_loop().time() + self._hub.poll_s)
        if until == math.inf:
            until = asyncio.get_running_loop().time() + IDLE_WAIT_S
        events, nudged = await self.sub.take_until(until)
        batch = self._take(events)
        if nudged or self.gap() is not None:
            batch += await self._catch_up()
        return batch

    def _take(self, events: Iterable[RunEvent]) -> list[RunEvent]:
        """The events that now follow the cursor without a gap; the cursor moves past them."""
        sub = self.sub
        for event in events:
            if event.seq > sub.cursor:
                self.held.setdefault(event.seq, event)
        if len(self.held) > HOLD_LIMIT:
            # A reader this far behind catches up from the log instead.
            self.held.clear()
            sub.nudge()
        out: list[RunEvent] = []
        while not self.ended and sub.cursor + 1 in self.held:
            event = self.held.pop(sub.cursor + 1)
            out.append(event)
            sub.cursor = event.seq
            self.ended = event.type in TERMINAL_EVENTS
        return out

    def gap(self) -> int | None:
        """The sequence of the first held event when one is missing before it."""
        return min(self.held) if self.held else None

    def _skip_lost(self) -> list[RunEvent]:
        """Move past deltas that will never come: a committed event waits after them."""
        first = self.gap()
        if first is None or self.held[first].type == EventType.LLM_DELTA:
            return []
        log.info("run %s: events %d..%d were lost", self._run_id, self.sub.cursor + 1, first - 1)
        self.sub.cursor = first - 1
        return self._take(())

    async def _catch_up(self) -> list[RunEvent]:
        """Close the gap after the cursor: the database's committed events, then what the
        bus still holds beyond them."""
        out: list[RunEvent] = []
        run_id = self._run_id
        while not self.ended:
            try:
                async with self._hub.db.read() as conn:
                    rows = await list_events(conn, run_id, after=self.sub.cursor)
                    end = (await log_ends(conn, [run_id])).get(run_id)
            except Exception:
                # The stream goes on; the next push, gap or backstop nudge reads again.
                log.warning("stream of run %s: cannot read the log", run_id, exc_info=True)
                return out
            out += self._take(rows)
            if end is None or (end.finished and self.sub.cursor >= end.next_seq - 1):
                # Gone, or ended and read to its end (a resume after its last event).
                self.ended = True
            if len(rows) < READ_LIMIT:
                break
        if not self.ended:
            try:
                out += self._take(await self._hub.bus.recent(str(run_id), self.sub.cursor))
            except Exception:
                log.warning("event bus: cannot read recent events of run %s", run_id, exc_info=True)
            out += self._skip_lost()
        return out
