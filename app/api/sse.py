"""A lean Server-Sent Events response: one task per stream and nothing extra per send.

sse-starlette's response ran four anyio tasks per stream (its generator, the ping, the
exit signal, the disconnect listener) and wrapped every send in a cancel scope: 22 KB of
an idle stream's memory and much of the fan-out CPU (BENCHMARKS.md). Here the request's
own task does it all:

- it waits on the run's subscription with a deadline, the next ping;
- the client leaving is noticed through `receive()`, run by hand up to the future it
  waits on (no task of its own), whose completion wakes the subscription;
- a send is run by hand the same way: it completes at once unless the client's socket
  buffer is full, and only then does it get a deadline (`stream_send_timeout_s`);
- the events one wake-up brings go out in one body message (one socket write);
- `StreamingFastAPI` streams the response a route returned once the app's middleware and
  routing coroutines have returned, so they are not held for the stream's life.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Generator, Iterator
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

from fastapi import FastAPI
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from app.services.streams import StreamHub

log = logging.getLogger(__name__)

T = TypeVar("T")

PING = b": ping\r\n\r\n"
"""A comment: proxies see traffic, EventSource ignores it."""
HANDOFF = "agentsvc.event_stream"
"""The scope key where StreamingFastAPI waits for the route's EventStream."""
CHUNK_BYTES = 65_536
"""Body messages stay about this small (asyncio's default write buffer limit): the server
waits for the client between them, and the send timeout can act."""
_END: Message = {"type": "http.response.body", "body": b"", "more_body": False}
_CUT_OFF: ContextVar[bool] = ContextVar("agentsvc_sse_cut_off", default=False)
"""Set in the request's task when its stream is left unfinished on purpose."""
UNFINISHED = "ASGI callable returned without completing response"
"""What uvicorn logs as an error when a response ends without its last body message."""
_HEADERS = (
    (b"cache-control", b"no-store"),
    (b"connection", b"keep-alive"),
    # nginx would otherwise buffer the stream.
    (b"x-accel-buffering", b"no"),
    (b"content-type", b"text/event-stream; charset=utf-8"),
)


class ByHand(Generic[T]):
    """An awaitable stepped by hand inside the calling task, as asyncio's Task steps a
    coroutine: `advance()` runs it until it finishes (True, `result` set) or waits (False,
    `waiting` is the future it waits on, or None when it only gave up one loop turn)."""

    __slots__ = ("_steps", "result", "waiting")

    def __init__(self, awaitable: Awaitable[T]) -> None:
        self._steps: Generator[Any, None, T] = awaitable.__await__()
        self.waiting: asyncio.Future[Any] | None = None
        self.result: T

    def ready(self) -> bool:
        """Whether `advance()` would go on at once rather than find it still waiting."""
        return self.waiting is None or self.waiting.done()

    def advance(self) -> bool:
        try:
            yielded = self._steps.send(None)
        except StopIteration as finished:
            self.waiting = None
            self.result = finished.value
            return True
        if yielded is None:
            self.waiting = None
        elif asyncio.isfuture(yielded):
            # What Task.__step does with the future a coroutine yields.
            yielded._asyncio_future_blocking = False
            self.waiting = yielded
        else:
            self.close()
            raise RuntimeError(f"an awaitable run by hand yielded {yielded!r}")
        return False

    def call_when_ready(self, callback: Callable[[], None]) -> None:
        """Have the loop call `callback` once `advance()` can go on."""
        if self.waiting is None:
            asyncio.get_running_loop().call_soon(callback)
        else:
            self.waiting.add_done_callback(lambda _: callback())

    def close(self) -> None:
        self._steps.close()


class ClientWatch:
    """Notices the client leaving without a task of its own: `receive()` runs by hand up to
    the future it waits on (the server completes it when the connection is lost), and its
    completion calls `wake`."""

    __slots__ = ("_pending", "_receive", "_wake", "left")

    def __init__(self, receive: Receive, wake: Callable[[], None]) -> None:
        self._receive = receive
        self._wake = wake
        self._pending: ByHand[Message] | None = None
        self.left = False

    def check(self) -> bool:
        """Whether the client has left: takes what `receive()` has without waiting for it."""
        while not self.left:
            if self._pending is None:
                self._pending = ByHand(self._receive())
            elif not self._pending.ready():
                return False
            if not self._pending.advance():
                self._pending.call_when_ready(self._wake)
                return False
            # A request body arriving (a GET's empty one) is not news; a disconnect is.
            self.left = self._pending.result["type"] == "http.disconnect"
            self._pending = None
        return True

    def close(self) -> None:
        if self._pending is not None:
            self._pending.close()
            self._pending = None


class ClientTooSlow(Exception):
    """The client read nothing for the whole send timeout."""


class _CutOffIsNoError(logging.Filter):
    """Drops uvicorn's error for a stream we cut off: ASGI has no way to abort a response
    other than returning without finishing it, and our own info line already says why."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_CUT_OFF.get() and record.getMessage().startswith(UNFINISHED))


@contextlib.contextmanager
def quiet_cut_offs() -> Iterator[None]:
    """While open, uvicorn's error logger keeps quiet about streams cut off on purpose
    (and only about those: the flag lives in the request's own task)."""
    uvicorn_errors = logging.getLogger("uvicorn.error")
    quiet = _CutOffIsNoError()
    uvicorn_errors.addFilter(quiet)
    try:
        yield
    finally:
        uvicorn_errors.removeFilter(quiet)


async def send_within(send: Send, message: Message, timeout_s: float) -> None:
    """Send one ASGI message; raise ClientTooSlow when the client's socket buffer stays full
    for `timeout_s`. A send that need not wait (nearly all) costs no timer."""
    step = ByHand(send(message))
    if step.advance():
        return
    loop = asyncio.get_running_loop()
    deadline: float | None = None
    try:
        while True:
            if step.waiting is None:
                await asyncio.sleep(0)
            else:
                if deadline is None:
                    deadline = loop.time() + timeout_s
                done, _ = await asyncio.wait((step.waiting,), timeout=deadline - loop.time())
                if not done:
                    raise ClientTooSlow
            if step.advance():
                return
    except BaseException:
        step.close()
        raise


class StreamingFastAPI(FastAPI):
    """FastAPI that streams an EventStream returned by a route once its own stack has
    returned: the middleware, routing and exception-handling coroutines, FastAPI's exit
    stacks and their `send` wrappers are not held for the life of every stream (9 KB each,
    BENCHMARKS.md) nor passed through by every write. Authentication, validation and error
    answers happen in the app as for any route."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        handed: list[EventStream] = []
        # A copy: what the app puts in its scope (routes, exit stacks) goes when it returns.
        await super().__call__({**scope, HANDOFF: handed}, receive, send)
        if handed:
            await handed[0].stream(receive, send)


class EventStream(Response):
    """The events of one run as `text/event-stream`: a `retry:` hint and a first comment,
    then each event as `id:`/`event:`/`data:` (encoded once per process by the hub), a
    comment ping when idle for `ping_s`, until the terminal event, the lifetime `max_s`, the
    server stopping, the client leaving (the run goes on) or the client reading nothing for
    `send_timeout_s` (cut off, one log line)."""

    # No media_type: FastAPI would describe the body as a string in the OpenAPI document;
    # the routes' `responses=` describe it instead. The headers are set in __init__.

    def __init__(
        self,
        hub: StreamHub,
        run_id: uuid.UUID,
        *,
        after: int,
        first: bytes,
        ping_s: float,
        send_timeout_s: float,
        max_s: float,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = [(b"x-job-id", str(run_id).encode()), *_HEADERS]
        self.hub = hub
        self.run_id = run_id
        self.after = after
        self.first = first
        self.ping_s = ping_s
        self.send_timeout_s = send_timeout_s
        self.max_s = max_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handoff = scope.get(HANDOFF)
        if isinstance(handoff, list):
            handoff.append(self)  # streamed once the app's stack has returned
            return
        await self.stream(receive, send)

    async def stream(self, receive: Receive, send: Send) -> None:
        """Send the whole stream (the ASGI call without the handoff)."""
        try:
            await self._stream(receive, send)
        except ClientTooSlow:
            # The server then closes the connection; the client may resume with Last-Event-ID.
            _CUT_OFF.set(True)
            log.info(
                "SSE client too slow: cut off after %g s without progress", self.send_timeout_s
            )
            return
        if self.background is not None:
            await self.background()

    async def _stream(self, receive: Receive, send: Send) -> None:
        timeout_s = self.send_timeout_s
        start = {
            "type": "http.response.start",
            "status": self.status_code,
            "headers": self.raw_headers,
        }
        await send_within(send, start, timeout_s)
        await send_within(send, _body(self.first), timeout_s)
        loop = asyncio.get_running_loop()
        wire_form = self.hub.wire_form
        async with self.hub.reading(self.run_id, after=self.after, max_s=self.max_s) as reader:
            client = ClientWatch(receive, reader.wake)
            try:
                # The ping deadline moves only when it passes, not with every write: the
                # reader's wait keeps one timer over many wake-ups.
                wrote_at = loop.time()
                ping_at = wrote_at + self.ping_s
                while not client.check() and not reader.done:
                    batch = await reader.next(ping_at)
                    if client.check():
                        break
                    if len(batch) == 1:
                        await send_within(send, _body(wire_form(batch[0])), timeout_s)
                    elif batch:
                        for chunk in _chunks([wire_form(e) for e in batch]):
                            await send_within(send, _body(chunk), timeout_s)
                    elif loop.time() < ping_at:
                        continue
                    elif loop.time() - wrote_at >= self.ping_s:
                        await send_within(send, _body(PING), timeout_s)
                    else:
                        ping_at = wrote_at + self.ping_s
                        continue
                    wrote_at = loop.time()
                    if wrote_at >= ping_at:
                        ping_at = wrote_at + self.ping_s
            finally:
                client.close()
        if not client.left:
            await send_within(send, _END, timeout_s)


def _chunks(frames: list[bytes]) -> Iterator[bytes]:
    """The frames joined into body messages, each closed once past CHUNK_BYTES: a
    catch-up of thousands of events still meets flow control between them."""
    start = size = 0
    for i, frame in enumerate(frames):
        size += len(frame)
        if size >= CHUNK_BYTES:
            yield b"".join(frames[start : i + 1])
            start, size = i + 1, 0
    if start < len(frames):
        yield b"".join(frames[start:])


def _body(chunk: bytes) -> Message:
    return {"type": "http.response.body", "body": chunk, "more_body": True}
