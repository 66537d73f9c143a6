"""Provider-neutral shapes of an LLM request and response.

Messages follow the Chat Completions model (system / user / assistant / tool);
each provider translates to and from its own wire format.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

JsonObject = dict[str, object]
Role = Literal["system", "user", "assistant", "tool"]


class ToolCall(BaseModel):
    """A tool call the model asked for, with its arguments parsed from JSON."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    arguments: JsonObject = Field(default_factory=dict)
    raw_arguments: str | None = None
    """The argument text as the model sent it, kept when it was not a JSON object."""


class Message(BaseModel):
    """One conversation message."""

    model_config = ConfigDict(frozen=True)

    role: Role
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    """For role `tool`: the id of the call this message answers."""
    name: str | None = None
    """For role `tool`: the tool's name."""


class ToolSpec(BaseModel):
    """A tool as the model sees it: name, description, JSON schema of its arguments."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    parameters: JsonObject


class LLMRequest(BaseModel):
    """Everything that determines a model's answer."""

    model_config = ConfigDict(frozen=True)

    provider: str
    model: str
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: Literal["auto", "none", "required"] | None = None
    temperature: float | None = None
    """None leaves the provider's default (usually 1), never 0."""
    max_output_tokens: int | None = None
    seed: int | None = None


class TokenUsage(BaseModel):
    """Tokens of one call. `input_tokens` includes `cached_tokens`."""

    model_config = ConfigDict(frozen=True)

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    """Input tokens read from the provider's prompt cache (billed at the cached rate)."""
    cache_write_tokens: int = 0
    """Input tokens written to the provider's prompt cache (Anthropic bills them higher)."""


class LLMResponse(BaseModel):
    """A finished model answer."""

    model_config = ConfigDict(frozen=True)

    message: Message
    usage: TokenUsage
    finish_reason: str | None = None
    model: str
    """The model that answered, as the provider reported it."""
    served_by: str | None = None
    """`provider/model` that answered when it is not the one asked (a fallback link)."""
    cache_hit: bool = False
    """Answered from the prompt cache: no provider call, no cost, no budget."""
    attempts: int = 1
    """Provider calls made for this answer (retries included)."""


DeltaCallback = Callable[[str], Awaitable[None]]
"""Receives text chunks of the answer while it streams."""


class ModelClient(Protocol):
    """A provider: turns a request into a response, streaming text if asked."""

    name: str

    async def complete(
        self, request: LLMRequest, *, on_delta: DeltaCallback | None = None
    ) -> LLMResponse:
        """Answer the request; call `on_delta` with text chunks when given (streaming)."""
        ...
