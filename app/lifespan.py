"""Builds what a process holds for its lifetime, yields it as typed state, closes it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx
from fastapi import FastAPI
from pydantic import SecretStr
from redis.asyncio import Redis

from app.agents.registry import AgentRegistry, build_registry
from app.api.sse import quiet_cut_offs
from app.bus.events import EventBus, InProcessBus
from app.bus.ratelimit import build_rate_limiter
from app.bus.redis_client import call_deadline_s, connect_redis
from app.bus.redis_events import RedisBus
from app.bus.wakeups import Wakeups
from app.bus.writes import RedisWrites
from app.jobs.executor import RunExecutor
from app.jobs.runtime import Runtime
from app.jobs.ssrf import GuardedTransport
from app.jobs.webhook_delivery import RetrySchedule
from app.jobs.webhooks import WebhookDispatcher
from app.jobs.worker import Worker
from app.llm.providers import Providers, build_providers
from app.llm.wire import ModelHttp
from app.observability.multiprocess import check_sharing
from app.services.auth import Authenticator
from app.services.ratelimit import RateLimit
from app.services.streams import StreamHub, StreamTokens
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
    worker: Worker | None
    streams: StreamHub
    stream_tokens: StreamTokens
    rate_limit: RateLimit
    """Requests per minute per API key, checked with the key."""


def process_owner() -> str:
    """A name for this process that is unique across hosts and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def validate_models(registry: AgentRegistry, providers: Providers, default_model: str) -> None:
    """Fail at start-up, not at the first request, when an agent names no known model."""
    for agent in registry.agents.values():
        for version in agent.versions:
            providers.resolve(version.model or default_model)
            policy = version.model_policy
            for model in () if policy is None else (policy.simple, policy.medium, policy.complex):
                providers.resolve(model)


def shared_http_client(*, timeout_s: float) -> httpx.AsyncClient:
    """The one client of the tools (`http_get`). It keeps no cookies: it serves every
    user's runs, so a cookie that a site gave one run's tool must never go out with another
    run's request. (Model calls have their own, `ModelHttp`.)"""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s, connect=10.0),
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=100),
        follow_redirects=False,
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
    )


def build_redis(settings: Settings) -> Redis | None:
    """The process's Redis client, when configured (`app.bus.redis_client`)."""
    if settings.redis_url is None:
        return None
    return connect_redis(settings.redis_url, timeout_s=settings.redis_timeout_s)


def build_bus(settings: Settings, redis: Redis | None) -> EventBus:
    """Redis when configured (any replica can stream any run), else this process only."""
    if redis is None or settings.redis_url is None:
        return InProcessBus(retention_s=settings.stream_retention_s)
    return RedisBus(
        redis,
        settings.redis_url,
        timeout_s=settings.redis_timeout_s,
        retention_s=settings.stream_retention_s,
    )


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


def _dispatcher(
    settings: Settings, db: Database
) -> tuple[WebhookDispatcher, httpx.AsyncClient] | None:
    secret = _secret(settings.webhook_secret)
    if secret is None:
        return None
    client = httpx.AsyncClient(
        transport=GuardedTransport(allowed_hosts=settings.webhook_allowed_hosts),
        follow_redirects=False,
    )
    dispatcher = WebhookDispatcher(
        db,
        client,
        secret=secret,
        schedule=RetrySchedule.parse(settings.webhook_retry_schedule),
        timeout_s=settings.webhook_timeout_s,
    )
    return dispatcher, client


@asynccontextmanager
async def open_services(settings: Settings, *, worker_capacity: int) -> AsyncIterator[Services]:
    """Open every long-lived resource, start the heartbeat (and a worker when
    `worker_capacity` > 0); on exit hand held runs back and close in reverse order."""
    if settings.secret_key.get_secret_value() == DEFAULT_SECRET and not settings.is_sqlite:
        log.warning("AGENTSVC_SECRET_KEY is the development default; set your own")
    check_sharing(settings.metrics_dir)
    async with contextlib.AsyncExitStack() as stack:
        db = Database(create_engine(settings.database_url, pool_size=settings.db_pool_size))
        stack.push_async_callback(db.dispose)
        http = shared_http_client(timeout_s=settings.llm_timeout_s)
        stack.push_async_callback(http.aclose)
        model_http = ModelHttp()
        stack.push_async_callback(model_http.aclose)
        providers = build_providers(
            http=model_http,
            openai_base_url=settings.openai_base_url,
            openai_api_key=_secret(settings.openai_api_key),
            anthropic_base_url=settings.anthropic_base_url,
            anthropic_api_key=_secret(settings.anthropic_api_key),
            timeout_s=settings.llm_timeout_s,
        )
        registry = build_registry(settings.agents_module)
        validate_models(registry, providers, settings.default_model)
        owner = process_owner()
        wakeups = Wakeups(owner=owner)
        await wakeups.listen(settings.database_url)
        stack.push_async_callback(wakeups.close)
        redis = build_redis(settings)
        writes = None
        if redis is not None:
            stack.push_async_callback(redis.aclose)
            writes = RedisWrites(redis, deadline_s=call_deadline_s(settings.redis_timeout_s))
            stack.push_async_callback(writes.aclose)
        bus = build_bus(settings, redis)
        stack.push_async_callback(bus.close)
        streams = StreamHub(db, bus, poll_s=settings.stream_poll_s)
        watching = asyncio.Event()
        stack.push_async_callback(_stop, watching, asyncio.create_task(streams.watch(watching)))
        runtime = Runtime(
            settings=settings,
            db=db,
            providers=providers,
            registry=registry,
            wakeups=wakeups,
            bus=bus,
            redis=redis,
            writes=writes,
            tool_context=ToolContext(
                sandbox_dir=settings.sandbox_dir.resolve(),
                http=http,
                http_allowed_hosts=settings.http_tool_allowed_hosts,
            ),
        )
        executor = RunExecutor(runtime, owner=owner)
        beating = asyncio.Event()
        heartbeat = asyncio.create_task(executor.heartbeat_forever(beating))
        stack.push_async_callback(_stop, beating, heartbeat)
        stack.push_async_callback(executor.shutdown)
        worker = None
        if worker_capacity > 0:
            delivery = _dispatcher(settings, db)
            if delivery is not None:
                stack.push_async_callback(delivery[1].aclose)
            worker = Worker(
                executor,
                capacity=worker_capacity,
                dispatcher=None if delivery is None else delivery[0],
            )
            worker_task = asyncio.create_task(worker.run())
            stack.push_async_callback(_stop_worker, worker, worker_task)
        auth = Authenticator(
            secret=settings.secret_key.get_secret_value(), db=db, static_keys=settings.api_keys
        )
        yield Services(
            settings=settings,
            db=db,
            http=http,
            providers=providers,
            registry=registry,
            auth=auth,
            executor=executor,
            worker=worker,
            streams=streams,
            stream_tokens=StreamTokens(
                settings.secret_key.get_secret_value(), ttl_s=settings.stream_token_ttl_s
            ),
            rate_limit=RateLimit(
                build_rate_limiter(redis, timeout_s=settings.redis_timeout_s),
                per_minute=settings.rate_limit_per_minute,
            ),
        )


async def _stop(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await asyncio.gather(task, return_exceptions=True)


async def _stop_worker(worker: Worker, task: asyncio.Task[None]) -> None:
    worker.stopping.set()
    await asyncio.gather(task, return_exceptions=True)


def make_lifespan(
    settings: Settings,
) -> Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Services]]]:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Services]]:
        capacity = settings.embedded_workers * settings.worker_concurrency
        with quiet_cut_offs():
            async with open_services(settings, worker_capacity=capacity) as services:
                yield {"services": services}

    return lifespan
