"""Graceful degradation: the model an agent asked for, then its fallback models, then a
simpler fallback agent.

Each link is its own breaker → retries → provider. A link whose breaker is open is
skipped at once; one whose retries are spent (or that failed for good) hands the call
to the next. The link that answers serves the rest of the run in this process (later
calls start there); `served_by` tells the runner which one it was. A call that
already streamed text to the reader never moves on: the reader would see two answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.llm.breaker import CircuitOpen
from app.llm.errors import ProviderError
from app.llm.retry import CallFailed
from app.llm.types import DeltaCallback, LLMRequest, LLMResponse, Message, ModelClient
from app.observability.metrics import FALLBACKS
from app.runner.errors import LLMUnavailable


@dataclass(frozen=True, kw_only=True)
class Link:
    """One way to answer: a model, and for a fallback agent its instructions and tools."""

    ref: str
    """`provider/model`."""
    client: ModelClient
    """The model behind its breaker and retries."""
    agent: str | None = None
    """The fallback agent this link stands for (None: the run's own agent)."""
    instructions: str = ""
    """The fallback agent's instructions, sent in place of the run's."""
    tools: frozenset[str] = frozenset()
    """The fallback agent's allowlist: it is offered the run's tools that are also on it."""

    @property
    def label(self) -> str:
        """How metrics and messages name the link."""
        return self.ref if self.agent is None else f"agent:{self.agent}"

    def adapt(self, request: LLMRequest) -> LLMRequest:
        """The run's request as this link sends it."""
        provider, _, model = self.ref.partition("/")
        if self.agent is None:
            return request.model_copy(update={"provider": provider, "model": model})
        tools = tuple(t for t in request.tools if t.name in self.tools)
        messages = [m for i, m in enumerate(request.messages) if i or m.role != "system"]
        if self.instructions:
            messages.insert(0, Message(role="system", content=self.instructions))
        return request.model_copy(
            update={
                "provider": provider,
                "model": model,
                "messages": tuple(messages),
                "tools": tools,
                "tool_choice": request.tool_choice if tools else None,
            }
        )


class FallbackChain:
    """A `ModelClient` over the links of one run, tried in order."""

    def __init__(self, links: Sequence[Link], *, agent: str) -> None:
        if not links:
            raise ValueError("a fallback chain needs at least one link")
        self.name = links[0].client.name
        self.links = tuple(links)
        self._agent = agent
        self._start = 0

    async def complete(
        self, request: LLMRequest, *, on_delta: DeltaCallback | None = None
    ) -> LLMResponse:
        """The first answer a link gives; `LLMUnavailable` when none can."""
        failures: list[str] = []
        attempts = 0
        for index in range(self._start, len(self.links)):
            link = self.links[index]
            try:
                response = await link.client.complete(link.adapt(request), on_delta=on_delta)
            except CircuitOpen as exc:
                failures.append(f"{link.label}: {exc}")
                continue
            except CallFailed as exc:
                attempts += exc.attempts
                failures.append(f"{link.label}: {exc.describe()}")
                if exc.streamed:
                    break
                continue
            except ProviderError as exc:
                attempts += 1
                failures.append(f"{link.label}: {type(exc).__name__}: {exc}")
                continue
            self._start = index
            if index == 0:
                return response
            FALLBACKS.labels(self._agent, link.label).inc()
            return response.model_copy(
                update={"served_by": link.ref, "attempts": attempts + response.attempts}
            )
        raise LLMUnavailable(self._exhausted(failures))

    def _exhausted(self, failures: list[str]) -> str:
        if len(failures) == 1:
            return failures[0]
        return "no model of the fallback chain could answer: " + "; ".join(failures)


def chain_length(*, fallbacks: Sequence[str], fallback_agent: str | None) -> int:
    """Links of a chain: the run's model, its fallback models, the fallback agent."""
    return 1 + len(fallbacks) + (fallback_agent is not None)
