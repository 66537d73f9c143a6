"""What every run needs (built once in the lifespan), and the runner's view of one run."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from app.agents.definition import AgentVersion
from app.agents.registry import AgentRegistry
from app.bus.events import EventBus
from app.bus.wakeups import Wakeups
from app.bus.writes import RedisWrites
from app.guards.limits import RunLimits, lowest
from app.guards.redact import Redactor
from app.jobs.resilience import call_timeout_s, fallback_models
from app.llm.providers import Providers
from app.runner.loop import RunSpec
from app.runner.shadow import ShadowReplay
from app.settings import Settings
from app.store.db import Database
from app.tools.base import ToolContext


@dataclass(frozen=True, kw_only=True)
class Runtime:
    """What every run needs, built once in the lifespan."""

    settings: Settings
    db: Database
    providers: Providers
    registry: AgentRegistry
    tool_context: ToolContext
    wakeups: Wakeups
    bus: EventBus
    """Where the runner publishes events live, after (deltas: before) they are committed."""
    redis: Redis | None = None
    """Shared state between replicas (budgets, cache, breakers, rate limits); None: this
    process's own stand-ins."""
    writes: RedisWrites | None = None
    """Writes to `redis` nobody waits for (settles, cache stores), pipelined per loop turn;
    set exactly when `redis` is."""


def build_spec(
    rt: Runtime,
    *,
    run_id: str,
    agent: str,
    version: AgentVersion,
    model_ref: str,
    max_turns: int,
    timeout_s: float,
    stream: bool = False,
    shadow: ShadowReplay | None = None,
) -> RunSpec:
    """The runner's view of a run: resolved model, allowlist and limits."""
    provider, _, model = model_ref.partition("/")
    return RunSpec(
        run_id=run_id,
        agent=agent,
        agent_version=version.version,
        provider=provider,
        model=model,
        fallback_models=fallback_models(
            rt.registry, version, default_model=rt.settings.default_model
        ),
        tools=frozenset(version.tools),
        limits=RunLimits(
            max_turns=max_turns,
            timeout_s=timeout_s,
            llm_timeout_s=call_timeout_s(rt.settings, version),
            max_run_tokens=lowest(version.max_run_tokens, rt.settings.max_run_tokens),
            max_run_cost_usd=lowest(version.max_run_cost_usd, rt.settings.max_run_cost_usd),
        ),
        temperature=version.temperature,
        max_output_tokens=version.max_output_tokens,
        stream=stream,
        redactor=Redactor(entities=version.redact),
        shadow=shadow,
    )
