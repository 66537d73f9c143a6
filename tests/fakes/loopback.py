"""Serve an ASGI app on loopback for the duration of a block, inside the test's event loop.

A real uvicorn server on 127.0.0.1 with a port the OS picks, so the code under
test goes through real sockets and HTTP framing::

    async with serve_app(app) as base_url:  # "http://127.0.0.1:<port>"
        ...

On exit the server stops accepting, closes idle connections and waits for
requests in flight, so a fake that holds responses back must release them
before the block ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import uvicorn
from starlette.types import ASGIApp

START_TIMEOUT_S = 5.0


class _Server(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Tests own the process: Ctrl-C must stop pytest, not just this server.
        yield


@asynccontextmanager
async def serve_app(app: ASGIApp) -> AsyncIterator[str]:
    """Run `app` on 127.0.0.1 (random port) and yield its base URL; stop it on exit."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        http="h11",
        ws="none",
        lifespan="off",
        log_config=None,  # leave the test process's logging configuration alone
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,  # a stuck handler fails the test instead of hanging it
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while not server.started:
                if task.done():
                    break
                await asyncio.sleep(0.005)
        if not server.started:
            raise RuntimeError("loopback server did not start")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
