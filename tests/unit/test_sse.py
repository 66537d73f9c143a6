"""The SSE response's one-task machinery: sends and `receive()` run by hand."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message

from app.api.sse import ClientTooSlow, ClientWatch, send_within

BODY: Message = {"type": "http.response.body", "body": b"x", "more_body": True}


class Socket:
    """A server's send: it waits while the client's buffer is full, as uvicorn's does."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()
        self.sent: list[Message] = []
        self.abandoned = 0

    async def send(self, message: Message) -> None:
        try:
            await self.writable.wait()
        except GeneratorExit:
            self.abandoned += 1
            raise
        self.sent.append(message)


async def test_a_send_that_need_not_wait_completes_at_once() -> None:
    socket = Socket()
    await send_within(socket.send, BODY, 0.01)
    assert socket.sent == [BODY]


async def test_a_send_waits_for_a_client_that_reads_again() -> None:
    socket = Socket()
    socket.writable.clear()
    asyncio.get_running_loop().call_soon(socket.writable.set)
    await send_within(socket.send, BODY, 30)
    assert socket.sent == [BODY]


async def test_a_client_that_reads_nothing_is_given_up() -> None:
    socket = Socket()
    socket.writable.clear()
    with pytest.raises(ClientTooSlow):
        await send_within(socket.send, BODY, 0.01)
    assert socket.sent == []
    assert socket.abandoned == 1  # the server's send was closed, not left hanging


class Connection:
    """A server's receive: the request's body at once, then nothing until it is lost."""

    def __init__(self) -> None:
        self.lost = asyncio.Event()
        self.messages: list[Message] = [{"type": "http.request", "body": b"", "more_body": False}]
        self.abandoned = 0

    async def receive(self) -> Message:
        if self.messages:
            return self.messages.pop(0)
        try:
            await self.lost.wait()
        except GeneratorExit:
            self.abandoned += 1
            raise
        return {"type": "http.disconnect"}


async def test_the_client_leaving_wakes_the_stream_and_is_seen() -> None:
    connection = Connection()
    woken = asyncio.Event()
    watch = ClientWatch(connection.receive, woken.set)

    assert not watch.check()
    assert not watch.check()
    connection.lost.set()
    async with asyncio.timeout(10):
        await woken.wait()
    assert watch.check()
    assert watch.left


async def test_closing_a_watch_abandons_its_receive() -> None:
    connection = Connection()
    watch = ClientWatch(connection.receive, lambda: None)
    assert not watch.check()
    watch.close()
    assert connection.abandoned == 1
