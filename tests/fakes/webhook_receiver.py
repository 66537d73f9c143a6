"""A webhook receiver on loopback: records every POST and answers from a script.

    async with serve_receiver() as receiver:
        receiver.answers.append(Answer(status=500))  # then 200, the default
        ...  # have something POST to receiver.url
        first, second = await receiver.wait_for(2)

Any path is accepted; `url` points at `/hooks`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes.loopback import serve_app


@dataclass(frozen=True, kw_only=True)
class Answer:
    """One scripted answer; `delay_s` holds the response back (released at shutdown)."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    headers: dict[str, str]
    """Lower-case names."""
    body: bytes
    path: str = "/hooks"
    at: float = 0.0
    """When it arrived, on the `time.monotonic()` clock."""


class Receiver:
    """Records requests; answers each with the next scripted `Answer` (200 when none)."""

    def __init__(self) -> None:
        self.base_url = ""
        """`http://127.0.0.1:<port>`, set once the server runs."""
        self.url = ""
        """`{base_url}/hooks`."""
        self.port = 0
        self.received: list[Received] = []
        self.answers: deque[Answer] = deque()
        self.closing = asyncio.Event()
        self._arrived = asyncio.Event()
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])

    async def wait_for(self, count: int, *, timeout_s: float = 5.0) -> list[Received]:
        """The requests once at least `count` have arrived; `TimeoutError` after `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            while len(self.received) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return list(self.received)

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        received = Received(dict(request.headers), body, request.url.path, time.monotonic())
        self.received.append(received)
        self._arrived.set()
        answer = self.answers.popleft() if self.answers else Answer()
        if answer.delay_s:
            try:
                await asyncio.wait_for(self.closing.wait(), answer.delay_s)
            except TimeoutError:
                pass
        return Response(b"receiver says no", answer.status, headers=dict(answer.headers))


@asynccontextmanager
async def serve_receiver() -> AsyncIterator[Receiver]:
    """Run a `Receiver` for the duration of the block."""
    receiver = Receiver()
    async with serve_app(receiver.app) as base_url:
        receiver.base_url = base_url
        receiver.port = int(base_url.rsplit(":", 1)[1])
        receiver.url = f"{base_url}/hooks"
        try:
            yield receiver
        finally:
            receiver.closing.set()  # release held responses so shutdown does not wait on them
