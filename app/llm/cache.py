"""The prompt cache: exact-match answers for deterministic LLM calls.

The key is the sha256 of a canonical JSON of the whole request (every field of
`LLMRequest`, defaults included, so a field added later is keyed too), the agent
and its version, and a namespace: the user by default, the agent when its version
opts into sharing (`AgentVersion.cache_scope = "agent"`). Only deterministic calls
are cached: temperature 0, or a seed. An omitted temperature is the provider's
default (usually 1), never 0.

The cache is the outermost guard: a hit returns the stored answer with
`cache_hit=True`, no tokens and no provider call, so it costs nothing and never
reaches the budget. A store that fails (Redis down) is skipped: the call goes to
the provider and its answer is not stored (fail open).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from app.agents.definition import AgentVersion
from app.bus.cache import ResponseStore
from app.bus.writes import watch
from app.llm.types import DeltaCallback, LLMRequest, LLMResponse, ModelClient, TokenUsage
from app.observability.metrics import CACHE_REQUESTS

log = logging.getLogger(__name__)

KEY_FORMAT = 1
"""Part of every key: bump it when the stored form of an answer changes."""


@dataclass(frozen=True, kw_only=True)
class CacheScope:
    """What one run's calls are cached under, and for how long."""

    ttl_s: float
    """Seconds an answer stays; > 0."""
    agent: str
    agent_version: str
    namespace: str
    """`user:<id>` (the default) or `agent:<name>` (shared by the agent's users)."""

    def key(self, request: LLMRequest) -> str:
        """The cache key of `request` in this scope: a sha256 hex digest."""
        canonical = {
            "format": KEY_FORMAT,
            "namespace": self.namespace,
            "agent": self.agent,
            "agent_version": self.agent_version,
            "request": request.model_dump(mode="json"),
        }
        return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


def is_deterministic(request: LLMRequest) -> bool:
    """Temperature 0 or a seed: the only calls whose answer may be reused."""
    return request.temperature == 0 or request.seed is not None


def cache_scope(
    version: AgentVersion, *, agent: str, user_id: str, default_ttl_s: float
) -> CacheScope | None:
    """The scope of a run's calls; None when caching is off for `version` (a TTL of 0,
    its own or, when it sets none, the service's `default_ttl_s`)."""
    ttl_s = default_ttl_s if version.cache_ttl_s is None else version.cache_ttl_s
    if ttl_s <= 0:
        return None
    namespace = f"agent:{agent}" if version.cache_scope == "agent" else f"user:{user_id}"
    return CacheScope(ttl_s=ttl_s, agent=agent, agent_version=version.version, namespace=namespace)


class CachedModel:
    """A ModelClient that answers repeated deterministic requests from `store`."""

    def __init__(self, inner: ModelClient, store: ResponseStore, *, scope: CacheScope) -> None:
        self.name = inner.name
        self._inner = inner
        self._store = store
        self._scope = scope

    async def complete(
        self, request: LLMRequest, *, on_delta: DeltaCallback | None = None
    ) -> LLMResponse:
        if not is_deterministic(request):
            CACHE_REQUESTS.labels(result="skip").inc()
            return await self._inner.complete(request, on_delta=on_delta)
        key = self._scope.key(request)
        try:
            raw = await self._store.get(key)
        except Exception as exc:
            CACHE_REQUESTS.labels(result="error").inc()
            log.warning("prompt cache unreachable, skipped: %s: %s", type(exc).__name__, exc)
            return await self._inner.complete(request, on_delta=on_delta)
        hit = _decode(raw)
        if hit is not None:
            CACHE_REQUESTS.labels(result="hit").inc()
            if on_delta is not None and hit.message.content:
                await on_delta(hit.message.content)
            return hit
        CACHE_REQUESTS.labels(result="miss").inc()
        answer = await self._inner.complete(request, on_delta=on_delta)
        # A fallback's answer is not the asked model's: never serve it as one.
        if answer.served_by is None and not answer.cache_hit:
            self._put(key, answer)
        return answer

    def _put(self, key: str, answer: LLMResponse) -> None:
        """Store the answer without waiting for the store."""

        def failed(exc: BaseException) -> None:
            log.warning("prompt cache: answer not stored: %s: %s", type(exc).__name__, exc)

        try:
            pending = self._store.put(
                key, answer.model_dump_json().encode(), ttl_s=self._scope.ttl_s
            )
        except Exception as exc:
            failed(exc)
            return
        watch(pending, failed)


def _decode(raw: bytes | None) -> LLMResponse | None:
    """A stored answer as a hit: no provider call, so no tokens, no cost, no attempts."""
    if raw is None:
        return None
    try:
        stored = LLMResponse.model_validate_json(raw)
    except ValidationError:
        log.warning("prompt cache: unreadable entry ignored")
        return None
    return stored.model_copy(update={"cache_hit": True, "usage": TokenUsage(), "attempts": 0})
