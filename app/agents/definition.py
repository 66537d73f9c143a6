"""Agent definitions: a name and its versions (instructions, model, tools, limits)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.agents.routing import ModelPolicy
from app.guards.redact import ALL_ENTITIES, Entity


@dataclass(frozen=True, kw_only=True)
class AgentVersion:
    """One version of an agent. Runs record the version that served them."""

    version: str
    instructions: str
    model: str | None = None
    """`provider/model`; None uses the service's default model."""
    tools: tuple[str, ...] = ()
    """The allowlist: the only tools this version may call."""
    fallbacks: tuple[str, ...] = ()
    """Other `provider/model`s that answer, in order, when the model's breaker is open or
    its retries are spent."""
    fallback_agent: str | None = None
    """A simpler agent that answers after the fallbacks: its model and instructions, offered
    the tools both agents allow, carry the same conversation on."""
    max_turns: int = 10
    timeout_s: float = 300.0
    temperature: float | None = None
    max_output_tokens: int | None = 1024
    max_run_tokens: int | None = None
    """Tokens (input + output) one run may use; None: AGENTSVC_MAX_RUN_TOKENS (the lower
    of the two applies when both are set)."""
    max_run_cost_usd: float | None = None
    """USD one run may cost; None: AGENTSVC_MAX_RUN_COST_USD (the lower applies)."""
    redact: frozenset[Entity] = ALL_ENTITIES
    """What the output filter removes from everything users see of this version's runs
    (`app.guards.redact.Entity`; empty: nothing). The trace keeps the raw text."""
    model_policy: ModelPolicy | None = None
    """Models by task complexity, chosen per run by a classifier; replaces `model`."""
    cache_scope: Literal["user", "agent"] = "user"
    """Who shares prompt-cache answers: each user alone, or every user of the agent."""
    cache_ttl_s: float | None = None
    """Prompt-cache lifetime of this version's answers; None: AGENTSVC_PROMPT_CACHE_TTL_S,
    0: never cached. Only deterministic calls (temperature 0 or a seed) are cached."""


@dataclass(frozen=True, kw_only=True)
class Agent:
    """An agent and its versions; `stable` serves traffic."""

    name: str
    description: str
    versions: tuple[AgentVersion, ...]
    stable: str

    def __post_init__(self) -> None:
        names = [v.version for v in self.versions]
        if len(set(names)) != len(names):
            raise ValueError(f"agent {self.name!r} declares a version twice")
        if self.stable not in names:
            raise ValueError(f"agent {self.name!r}: stable version {self.stable!r} is not declared")

    def version(self, version: str | None = None) -> AgentVersion:
        """The named version, or the stable one."""
        wanted = version or self.stable
        for v in self.versions:
            if v.version == wanted:
                return v
        raise KeyError(wanted)
