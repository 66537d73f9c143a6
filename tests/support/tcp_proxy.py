"""A TCP proxy on loopback that a test can cut, to play a database restart or failover:
every open connection closed at once, new ones refused for a while."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class CuttableProxy:
    """Forwards 127.0.0.1:`port` to the target until `cut` is called."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._writers: set[asyncio.StreamWriter] = set()
        self._refusing_until = 0.0
        self.port = 0

    async def cut(self, *, refuse_s: float = 0.0) -> None:
        """Close every connection; refuse new ones for `refuse_s`."""
        self._refusing_until = asyncio.get_running_loop().time() + refuse_s
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await asyncio.sleep(0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if asyncio.get_running_loop().time() < self._refusing_until:
            writer.transport.abort()  # as close to a refused connection as a listener gets
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


@asynccontextmanager
async def cuttable_proxy(target_host: str, target_port: int) -> AsyncIterator[CuttableProxy]:
    proxy = CuttableProxy(target_host, target_port)
    server = await asyncio.start_server(proxy._accept, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        await proxy.cut()
        server.close()
        await server.wait_closed()
