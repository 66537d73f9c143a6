"""What a tool is: a typed argument model, a risk level, an idempotency flag, a timeout.

Tools are plain async functions over a validated pydantic model. They receive a
`ToolContext` with the few outside resources they may touch, never the app.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import httpx
from pydantic import BaseModel

from app.llm.types import JsonObject, ToolSpec


class Risk(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class ToolFailure(Exception):
    """A tool could not do what was asked; the message goes back to the model."""


class ToolUnavailable(ToolFailure):
    """What the tool depends on failed (timeout, connection error, 5xx): an idempotent
    tool is tried again, and it counts toward the tool's circuit breaker."""


@dataclass(frozen=True, kw_only=True)
class ToolContext:
    """Outside resources a tool may use, chosen by the operator."""

    sandbox_dir: Path
    """The only folder the file tools may touch."""
    http: httpx.AsyncClient
    http_allowed_hosts: frozenset[str] = frozenset()
    """Hosts `http_get` may fetch; empty means none."""
    idempotency_key: str = ""
    """Stable key of this call `(run, turn, index)`, the same when the call is re-run."""


ToolFn = Callable[[BaseModel, ToolContext], Awaitable[str]]


@dataclass(frozen=True, kw_only=True)
class Tool:
    """A tool the model may call."""

    name: str
    description: str
    args_model: type[BaseModel]
    """Its JSON schema is what the model sees; every call is validated against it."""
    fn: ToolFn
    risk: Risk = Risk.LOW
    idempotent: bool = True
    """Safe to run twice with the same arguments (re-run after a crash)."""
    read_only: bool = False
    """Changes nothing outside the run."""
    timeout_s: float = 10.0
    max_result_chars: int = 16_000

    def json_schema(self) -> dict[str, object]:
        """The JSON schema of the arguments (built once per model: it is costly)."""
        return _schema_of(self.args_model)


@functools.cache
def _schema_of(model: type[BaseModel]) -> dict[str, object]:
    return model.model_json_schema()


@dataclass(frozen=True)
class ToolOffer:
    """Tools as a model is offered them, built once per set of names."""

    specs: tuple[ToolSpec, ...]
    """Sorted by name."""
    trace: tuple[JsonObject, ...]
    """The specs as a trace row's request holds them (JSON); shared, never to be changed."""


@dataclass
class ToolRegistry:
    """Every tool known to the service, by name."""

    tools: dict[str, Tool] = field(default_factory=dict)
    _offers: dict[frozenset[str], ToolOffer] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def add(self, tool: Tool) -> None:
        if tool.name in self.tools:
            raise ValueError(f"tool {tool.name!r} is registered twice")
        self.tools[tool.name] = tool
        self._offers.clear()

    def get(self, name: str) -> Tool | None:
        return self.tools.get(name)

    def offer(self, names: Iterable[str]) -> ToolOffer:
        """The registered tools among `names`, as the model sees them (every run of an
        agent version offers the same set: its schemas are built and dumped once)."""
        key = frozenset(names)
        offer = self._offers.get(key)
        if offer is None:
            specs = tuple(
                ToolSpec(name=t.name, description=t.description, parameters=t.json_schema())
                for name in sorted(key)
                if (t := self.tools.get(name)) is not None
            )
            trace = tuple(s.model_dump(mode="json", exclude_none=True) for s in specs)
            offer = self._offers[key] = ToolOffer(specs, trace)
        return offer
