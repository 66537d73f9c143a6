"""The resilience guards of this process, composed once: retry policies, circuit breakers
(shared through Redis when configured), each run's fallback chain, and the tools wrapped
in their breakers and retries.

Tools are guarded by wrapping each tool's function, so the runner stays as it is: an
open breaker answers the model with a tool error at once (the tool is not called); an
idempotent tool that raises `ToolUnavailable` is tried again within its own timeout.
"""

from __future__ import annotations

from dataclasses import replace

from pydantic import BaseModel
from redis.asyncio import Redis

from app.agents.definition import AgentVersion
from app.agents.registry import AgentRegistry, UnknownAgent
from app.bus.breakers import LocalBreakerStore, RedisBreakerStore
from app.llm.breaker import BreakerGuard, BreakerPolicy, Breakers, CircuitOpen
from app.llm.fallback import FallbackChain, Link, chain_length
from app.llm.providers import Providers
from app.llm.retry import RetryingModel, RetryPolicy, call_with_retries
from app.llm.types import ModelClient
from app.runner.spec import RunSpec
from app.settings import Settings
from app.tools.base import Tool, ToolContext, ToolFn, ToolRegistry, ToolUnavailable


def build_breakers(settings: Settings, redis: Redis | None) -> Breakers:
    """Breakers in Redis (this process's own while it is down), or this process's only.
    A closed answer of Redis is trusted for `breaker_trust_closed_s`; this process's own
    breakers are exact and cost no round trip, so they are asked every time."""
    local = LocalBreakerStore()
    store = local if redis is None else RedisBreakerStore(redis, fallback=local)
    policy = BreakerPolicy(
        failure_threshold=settings.breaker_failure_threshold,
        window_s=settings.breaker_window_s,
        cooldown_s=settings.breaker_cooldown_s,
        half_open_probes=settings.breaker_half_open_probes,
    )
    trust_s = 0.0 if redis is None else settings.breaker_trust_closed_s
    return Breakers(store, policy, trust_closed_s=trust_s)


def call_timeout_s(settings: Settings, version: AgentVersion) -> float:
    """The runner's bound on one guarded model call of `version`'s runs: every link of its
    chain may spend its retries and one last attempt."""
    links = chain_length(fallbacks=version.fallbacks, fallback_agent=version.fallback_agent)
    return links * (settings.llm_retry_max_s + settings.llm_timeout_s)


def fallback_models(
    registry: AgentRegistry, version: AgentVersion, *, default_model: str
) -> tuple[str, ...]:
    """The models after a version's own that may answer its runs' calls: its fallback
    models, then its fallback agent's model."""
    if version.fallback_agent is None:
        return version.fallbacks
    _, fallback = registry.resolve(version.fallback_agent)
    return (*version.fallbacks, fallback.model or default_model)


class Resilience:
    """Builds each run's model client (fallback chain → breaker → retries → provider)
    and holds the guarded tools."""

    def __init__(
        self,
        settings: Settings,
        *,
        providers: Providers,
        registry: AgentRegistry,
        breakers: Breakers,
    ) -> None:
        """Fails at start-up when a fallback names an unknown model or agent."""
        self._settings = settings
        self._providers = providers
        self._registry = registry
        self.breakers = breakers
        self._llm_retry = RetryPolicy(
            attempts=settings.llm_retry_attempts,
            max_elapsed_s=settings.llm_retry_max_s,
            wait_initial_s=settings.retry_wait_initial_s,
            wait_max_s=settings.retry_wait_max_s,
        )
        tool_retry = RetryPolicy(
            attempts=settings.tool_retry_attempts,
            max_elapsed_s=None,  # the tool's own timeout bounds the call and its retries
            wait_initial_s=settings.retry_wait_initial_s,
            wait_max_s=settings.retry_wait_max_s,
        )
        self._check_chains()
        self.tools = ToolRegistry(
            {
                name: guard_tool(tool, breakers, tool_retry)
                for name, tool in registry.tools.tools.items()
            }
        )

    def _check_chains(self) -> None:
        for agent in self._registry.agents.values():
            for version in agent.versions:
                if version.fallback_agent == agent.name:
                    raise ValueError(f"agent {agent.name!r} names itself as its fallback agent")
                for ref in self._fallback_models(version):
                    self._providers.resolve(ref)

    def _fallback_models(self, version: AgentVersion) -> tuple[str, ...]:
        return fallback_models(self._registry, version, default_model=self._settings.default_model)

    def targets(self) -> list[str]:
        """Every breaker this process may use: each model of every agent's chain, each tool."""
        refs = {self._settings.default_model}
        for agent in self._registry.agents.values():
            for version in agent.versions:
                refs.add(version.model or self._settings.default_model)
                refs.update(self._fallback_models(version))
                policy = version.model_policy
                if policy is not None:
                    refs.update([policy.simple, policy.medium, policy.complex])
        return [f"llm:{ref}" for ref in sorted(refs)] + [
            f"tool:{name}" for name in sorted(self.tools.tools)
        ]

    def model_client(self, spec: RunSpec) -> ModelClient:
        """The run's fallback chain: its model, its version's fallback models, then its
        fallback agent (each link behind its breaker and retries)."""
        primary = f"{spec.provider}/{spec.model}"
        try:
            _, version = self._registry.resolve(spec.agent, spec.agent_version)
        except UnknownAgent:
            version = None
        refs = [primary, *(() if version is None else version.fallbacks)]
        links = [Link(ref=ref, client=self._guarded(ref)) for ref in dict.fromkeys(refs)]
        if version is not None and version.fallback_agent is not None:
            _, fallback = self._registry.resolve(version.fallback_agent)
            ref = fallback.model or self._settings.default_model
            links.append(
                Link(
                    ref=ref,
                    client=self._guarded(ref),
                    agent=version.fallback_agent,
                    instructions=fallback.instructions,
                    tools=frozenset(fallback.tools),
                )
            )
        return FallbackChain(links, agent=spec.agent)

    def _guarded(self, ref: str) -> ModelClient:
        client, model = self._providers.resolve(ref)
        provider = ref.partition("/")[0]
        retrying = RetryingModel(
            client,
            self._llm_retry,
            provider=provider,
            model=model,
            attempt_timeout_s=self._settings.llm_timeout_s,
        )
        return BreakerGuard(retrying, self.breakers, target=f"llm:{ref}")


def guard_tool(tool: Tool, breakers: Breakers, policy: RetryPolicy) -> Tool:
    """`tool` behind its breaker (`tool:<name>`), and its retries when it is idempotent."""
    target = f"tool:{tool.name}"
    call = tool.fn

    async def guarded(args: BaseModel, ctx: ToolContext) -> str:
        try:
            probe = await breakers.admit(target)
        except CircuitOpen as exc:
            raise ToolUnavailable(f"{tool.name} is not available now: {exc}") from None
        try:
            if tool.idempotent:
                text = await call_with_retries(
                    policy, lambda: call(args, ctx), retryable=_unavailable
                )
            else:
                text = await call(args, ctx)
        except ToolUnavailable:
            await breakers.record(target, ok=False, probe=probe)
            raise
        except Exception:
            # The tool answered (a refusal, a bug for these arguments): not an outage.
            await breakers.record(target, ok=True, probe=probe)
            raise
        await breakers.record(target, ok=True, probe=probe)
        return text

    fn: ToolFn = guarded
    return replace(tool, fn=fn)


def _unavailable(error: BaseException) -> bool:
    return isinstance(error, ToolUnavailable)
