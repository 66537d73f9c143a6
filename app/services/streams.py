"""Following a run's events: the log first, then the live bus, with every gap filled.

A reader subscribes to the bus before it reads the log, so nothing published after
it looked can pass it by. It passes on events strictly in sequence: an event that
arrives ahead of a missing one waits while the gap is filled from what the bus still
holds and then from the database. Only `llm.delta` events can be missing from both
(a worker died mid-call before committing them); once a later committed event shows
they will never come, the reader moves past them. A backstop task checks the log
for every idle reader of this process in one query per interval, so a lost push
delays nothing by more than that interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable

import orjson
from itsdangerous import BadSignature, SignatureExpired, TimestampSigner

from app.bus.events import EventBus, Subscription
from app.errors import NotFound, Unauthorized
from app.runner.events import TERMINAL_EVENTS, EventType, RunEvent
from app.services.auth import Principal
from app.store.db import Database
from app.store.events import READ_LIMIT, list_events, log_ends
from app.store.runs import ANYONE, TERMINAL_STATUSES, RunRecord, get_run

log = logging.getLogger(__name__)

HOLD_LIMIT = 10_000
"""Out-of-order events a reader keeps while it fills a gap."""
WIRE_CACHE_SIZE = 10_000
"""Recent events kept in their encoded form."""
IDLE_WAIT_S = 3600.0
"""How long an idle reader sleeps when nothing wakes it (pushes and nudges do)."""


class StreamTokens:
    """Short-lived tokens that let a browser read one run's stream and nothing else."""

    def __init__(self, secret: str, *, ttl_s: float) -> None:
        self._signer = TimestampSigner(secret, salt="agentsvc.stream")
        self._ttl_s = ttl_s

    def issue(self, run_id: uuid.UUID) -> str:
        signed = self._signer.sign(run_id.hex).decode()
        return signed.split(".", 1)[1]

    def check(self, run_id: uuid.UUID, token: str) -> bool:
        try:
            self._signer.unsign(f"{run_id.hex}.{token}", max_age=int(self._ttl_s))
        except (SignatureExpired, BadSignature):
            return False
        return True


class _Reader:
    """One stream's position and the events it holds back until the gap before them closes."""

    def __init__(self, sub: Subscription, after: int) -> None:
        self.sub = sub
        sub.cursor = after
        self.held: dict[int, RunEvent] = {}
        self.ended = False

    def take(self, events: Iterable[RunEvent]) -> list[RunEvent]:
        """The events that now follow the cursor without a gap; the cursor moves past them."""
        for event in events:
            if event.seq > self.sub.cursor:
                self.held.setdefault(event.seq, event)
        if len(self.held) > HOLD_LIMIT:
            # A reader this far behind catches up from the log instead.
            self.held.clear()
            self.sub.nudge()
        out: list[RunEvent] = []
        while not self.ended and self.sub.cursor + 1 in self.held:
            event = self.held.pop(self.sub.cursor + 1)
            out.append(event)
            self.sub.cursor = event.seq
            self.ended = event.type in TERMINAL_EVENTS
        return out

    def gap(self) -> int | None:
        """The sequence of the first held event when one is missing before it."""
        return min(self.held) if self.held else None

    def skip_lost(self) -> list[RunEvent]:
        """Move past deltas that will never come: a committed event waits after them."""
        first = self.gap()
        if first is None or self.held[first].type == EventType.LLM_DELTA:
            return []
        log.info("run %s: events %d..%d were lost", self.sub.run_id, self.sub.cursor + 1, first - 1)
        self.sub.cursor = first - 1
        return self.take(())


class StreamHub:
    """This process's stream readers: following runs, and the backstop that checks the log."""

    def __init__(self, db: Database, bus: EventBus, *, poll_s: float) -> None:
        self.db = db
        self.bus = bus
        self._poll_s = poll_s
        self._wire: OrderedDict[tuple[str, int], bytes] = OrderedDict()

    def wire_form(self, event: RunEvent) -> bytes:
        """The event as an SSE message (`id:`, `event:`, `data:` JSON), encoded once for
        every reader of this process: a run followed by a thousand readers costs one
        encoding per event, not a thousand."""
        key = (event.run_id, event.seq)
        encoded = self._wire.get(key)
        if encoded is None:
            data = orjson.dumps(event.payload())
            encoded = b"id: %d\r\nevent: %s\r\ndata: %s\r\n\r\n" % (
                event.seq,
                event.type.value.encode(),
                data,
            )
            self._wire[key] = encoded
            if len(self._wire) > WIRE_CACHE_SIZE:
                self._wire.popitem(last=False)
        return encoded

    async def follow(
        self, run_id: uuid.UUID, *, after: int = -1, max_s: float | None = None
    ) -> AsyncIterator[RunEvent]:
        """The run's events with a sequence above `after`, in order, each once, ending
        with its terminal event (or after `max_s`). The caller has checked that it may
        read the run."""
        until = None if max_s is None else time.monotonic() + max_s
        rid = str(run_id)
        async with self.bus.subscribe(rid) as sub:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s):
                    await sub.ready.wait()
            reader = _Reader(sub, after)
            for event in await self._from_log(reader, run_id):
                yield event
            while not reader.ended and (until is None or time.monotonic() < until):
                # An idle reader sleeps until a push or a nudge from the backstop (or the
                # end of its life); only one waiting for a gap to close looks again soon.
                wait_s = self._poll_s if reader.gap() is not None else IDLE_WAIT_S
                if until is not None:
                    wait_s = min(wait_s, max(0.0, until - time.monotonic()))
                events, nudged = await sub.take(wait_s)
                batch = reader.take(events)
                if nudged or reader.gap() is not None:
                    batch += await self._from_log(reader, run_id)
                for event in batch:
                    yield event

    async def _from_log(self, reader: _Reader, run_id: uuid.UUID) -> list[RunEvent]:
        """Close the gap after the cursor: the database's committed events, then what the
        bus still holds beyond them."""
        out: list[RunEvent] = []
        while not reader.ended:
            try:
                async with self.db.read() as conn:
                    rows = await list_events(conn, run_id, after=reader.sub.cursor)
                    end = (await log_ends(conn, [run_id])).get(run_id)
            except Exception:
                # The stream goes on; the next push, gap or backstop nudge reads again.
                log.warning("stream of run %s: cannot read the log", run_id, exc_info=True)
                return out
            out += reader.take(rows)
            if end is None or (end.finished and reader.sub.cursor >= end.next_seq - 1):
                # Gone, or ended and read to its end (a resume after its last event).
                reader.ended = True
            if len(rows) < READ_LIMIT:
                break
        if not reader.ended:
            try:
                out += reader.take(await self.bus.recent(str(run_id), reader.sub.cursor))
            except Exception:
                log.warning("event bus: cannot read recent events of run %s", run_id, exc_info=True)
            out += reader.skip_lost()
        return out

    async def watch(self, stop: asyncio.Event) -> None:
        """The backstop: nudge every idle reader whose run has committed events it has not
        seen (a push lost with a Redis restart, events appended by another process)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s):
                    await stop.wait()
            try:
                await self._check_idle_readers()
            except Exception:
                log.warning("stream backstop check failed", exc_info=True)

    async def _check_idle_readers(self) -> None:
        idle_since = time.monotonic() - self._poll_s
        fanout = self.bus.fanout
        idle = [uuid.UUID(r) for r in fanout.runs() if _any_idle(fanout.readers(r), idle_since)]
        if not idle:
            return
        async with self.db.read() as conn:
            ends = await log_ends(conn, idle)
        for run_id, end in ends.items():
            for sub in fanout.readers(str(run_id)):
                if sub.cursor < end.next_seq - 1:
                    sub.nudge()


def _any_idle(subs: list[Subscription], since: float) -> bool:
    return any(s.seen_at < since for s in subs)


async def open_stream(
    db: Database,
    tokens: StreamTokens,
    run_id: uuid.UUID,
    *,
    principal: Principal | None,
    token: str | None,
) -> RunRecord:
    """The run whose stream is asked for, if the caller may read it: with the run's
    stream token, or with a key that may see the run (else 404, as for any run)."""
    if token is not None and tokens.check(run_id, token):
        owner = ANYONE
    elif principal is None:
        raise Unauthorized(
            "send Authorization: Bearer <key>, or use the run's stream_url with a valid token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    else:
        owner = principal.owner
    async with db.read() as conn:
        run = await get_run(conn, run_id, owner)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run


def read_to_the_end(run: RunRecord, after: int) -> bool:
    """The run has ended and the reader has its last event: nothing will ever follow."""
    return run.status in TERMINAL_STATUSES and after >= run.event_seq - 1
