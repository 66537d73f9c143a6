"""Builds what the app holds for its lifetime, yields it as typed state, closes it."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import httpx
from fastapi import FastAPI
from pydantic import SecretStr

from app.agents.registry import AgentRegistry, build_registry
from app.jobs.executor import RunExecutor, Runtime
from app.llm.providers import Providers, build_providers
from app.services.auth import Authenticator
from app.settings import DEFAULT_SECRET, Settings
from app.store.db import Database, create_engine
from app.tools.base import ToolContext

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Services:
    """Everything routes reach through dependencies."""

    settings: Settings
    db: Database
    http: httpx.AsyncClient
    providers: Providers
    registry: AgentRegistry
    auth: Authenticator
    executor: RunExecutor


def process_owner() -> str:
    """A name for this process that is unique across hosts and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def validate_models(registry: AgentRegistry, providers: Providers, default_model: str) -> None:
    """Fail at start-up, not at the first request, when an agent names no known model."""
    for agent in registry.agents.values():
        for version in agent.versions:
            providers.resolve(version.model or default_model)


@asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    """Open every long-lived resource; close them in reverse order."""
    if settings.secret_key.get_secret_value() == DEFAULT_SECRET and not settings.is_sqlite:
        log.warning("AGENTSVC_SECRET_KEY is the development default; set your own")
    db = Database(create_engine(settings.database_url, pool_size=settings.db_pool_size))
    http = httpx.AsyncClient(
        timeout=httpx.Timeout(settings.llm_timeout_s, connect=10.0),
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=100),
        follow_redirects=False,
    )
    try:
        providers = build_providers(
            http=http,
            openai_base_url=settings.openai_base_url,
            openai_api_key=_secret(settings.openai_api_key),
            anthropic_base_url=settings.anthropic_base_url,
            anthropic_api_key=_secret(settings.anthropic_api_key),
            timeout_s=settings.llm_timeout_s,
        )
        registry = build_registry(settings.agents_module)
        validate_models(registry, providers, settings.default_model)
        runtime = Runtime(
            settings=settings,
            db=db,
            providers=providers,
            registry=registry,
            tool_context=ToolContext(
                sandbox_dir=settings.sandbox_dir.resolve(),
                http=http,
                http_allowed_hosts=settings.http_tool_allowed_hosts,
            ),
        )
        executor = RunExecutor(runtime, owner=process_owner())
        auth = Authenticator(
            secret=settings.secret_key.get_secret_value(), db=db, static_keys=settings.api_keys
        )
        try:
            yield Services(
                settings=settings,
                db=db,
                http=http,
                providers=providers,
                registry=registry,
                auth=auth,
                executor=executor,
            )
        finally:
            await executor.shutdown()
    finally:
        await http.aclose()
        await db.dispose()


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


def make_lifespan(
    settings: Settings,
) -> Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Services]]]:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Services]]:
        async with open_services(settings) as services:
            yield {"services": services}

    return lifespan
