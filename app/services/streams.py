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
import signal
import time
import uuid
from collections import OrderedDict

import orjson
from itsdangerous import BadSignature, SignatureExpired, TimestampSigner

from app.bus.events import EventBus, Subscription
from app.errors import NotFound, Unauthorized
from app.runner.events import RunEvent
from app.services.auth import Principal
from app.services.stream_reader import Follower
from app.store.db import Database
from app.store.events import log_ends
from app.store.runs import ANYONE, TERMINAL_STATUSES, RunRecord, get_run

log = logging.getLogger(__name__)

WIRE_CACHE_SIZE = 10_000
"""Recent events kept in their encoded form."""


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


class StreamHub:
    """This process's stream readers: following runs, and the backstop that checks the log."""

    def __init__(self, db: Database, bus: EventBus, *, poll_s: float) -> None:
        self.db = db
        self.bus = bus
        self.poll_s = poll_s
        self.closing = False
        """Set when the server stops: every stream ends so that its client reconnects to
        another replica (uvicorn waits for open responses before the app's shutdown)."""
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

    def reading(
        self, run_id: uuid.UUID, *, after: int = -1, max_s: float | None = None
    ) -> Follower:
        """A reader of the run's events with a sequence above `after`, in order, each once,
        up to its terminal event (or for `max_s`); use it with `async with`. The caller
        has checked that it may read the run."""
        return Follower(self, run_id, after=after, max_s=max_s)

    def end_streams(self) -> None:
        """End every stream of this process now (the server is stopping)."""
        self.closing = True
        fanout = self.bus.fanout
        for run_id in fanout.runs():
            for sub in fanout.readers(run_id):
                sub.wake()

    async def watch(self, stop: asyncio.Event) -> None:
        """The backstop: nudge every idle reader whose run has committed events it has not
        seen (a push lost with a Redis restart, events appended by another process); and
        end every stream once the server is told to stop."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await stop.wait()
            if not self.closing and _server_stopping():
                self.end_streams()
            try:
                await self._check_idle_readers()
            except Exception:
                log.warning("stream backstop check failed", exc_info=True)

    async def _check_idle_readers(self) -> None:
        idle_since = time.monotonic() - self.poll_s
        fanout = self.bus.fanout
        idle = [uuid.UUID(r) for r in fanout.runs() if _any_idle(fanout.readers(r), idle_since)]
        if not idle:
            return
        async with self.db.read() as conn:
            ends = await log_ends(conn, idle)
        for run_id in idle:
            end = ends.get(run_id)
            for sub in fanout.readers(str(run_id)):
                # The reader of a deleted run, or of a finished one, is told too: no event
                # may ever come to it (its session was deleted; a Last-Event-ID beyond the
                # run's last), and a look at the log ends its stream.
                if end is None or end.finished or sub.cursor < end.next_seq - 1:
                    sub.nudge()


def _server_stopping() -> bool:
    """uvicorn was told to stop (SIGTERM, Ctrl-C). It tells the app nothing until every
    response has ended, and a stream lasts up to `stream_max_s`; so read the flag of the
    server whose method handles SIGTERM (what sse-starlette did too)."""
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return getattr(server, "should_exit", False) is True


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
