"""Agent definitions: a name and its versions (instructions, model, tools, limits)."""

from __future__ import annotations

from dataclasses import dataclass

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
    max_turns: int = 10
    timeout_s: float = 300.0
    temperature: float | None = None
    max_output_tokens: int | None = 1024
    redact: frozenset[Entity] = ALL_ENTITIES
    """What the output filter removes from everything users see of this version's runs
    (`app.guards.redact.Entity`; empty: nothing). The trace keeps the raw text."""


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
