"""Run the app in-process (lifespan included) behind an httpx client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient

from app.main import create_app
from app.settings import Settings


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[AsyncClient]:
    """The app for `settings`, started, with a client that calls it through ASGI."""
    async with LifespanManager(create_app(settings)) as manager:
        transport = ASGITransport(manager.app)
        async with AsyncClient(transport=transport, base_url="http://agentsvc") as client:
            yield client
