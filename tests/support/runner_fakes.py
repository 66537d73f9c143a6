"""A scripted model and an in-memory RunStore: the runner's edges, with no I/O."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

from app.llm.types import (
    DeltaCallback,
    JsonObject,
    LLMRequest,
    LLMResponse,
    Message,
    TokenUsage,
    ToolCall,
)
from app.runner.events import RunEvent
from app.runner.protocols import Step, ToolCallRecord
from app.runner.state import Checkpoint
from app.tools.base import Risk, Tool, ToolContext

Reply = LLMResponse | BaseException | float
"""A response, an error to raise, or seconds to hang."""


def text(content: str, *, tokens: int = 10) -> LLMResponse:
    return LLMResponse(
        message=Message(role="assistant", content=content),
        usage=TokenUsage(input_tokens=tokens, output_tokens=tokens // 2),
        model="scripted",
    )


def tool_call(name: str, arguments: JsonObject, *, call_id: str = "c1") -> LLMResponse:
    return LLMResponse(
        message=Message(
            role="assistant", tool_calls=(ToolCall(id=call_id, name=name, arguments=arguments),)
        ),
        usage=TokenUsage(input_tokens=10, output_tokens=5),
        model="scripted",
    )


@dataclass
class ScriptedModel:
    """Answers from a script; `deltas` are streamed before each text answer."""

    replies: list[Reply]
    deltas: list[str] = field(default_factory=list)
    requests: list[LLMRequest] = field(default_factory=list)
    name: str = "scripted"

    async def complete(
        self, request: LLMRequest, *, on_delta: DeltaCallback | None = None
    ) -> LLMResponse:
        self.requests.append(request)
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(reply, float):
            await asyncio.sleep(reply)
            raise AssertionError("the runner should have timed out")
        if on_delta is not None:
            for chunk in self.deltas:
                await on_delta(chunk)
        return reply


@dataclass
class MemoryStore:
    """Keeps committed steps; `refuse` makes every write raise that error (LeaseLost,
    StoreUnavailable)."""

    steps: list[Step] = field(default_factory=list)
    intents: dict[str, ToolCallRecord] = field(default_factory=dict)
    events: list[RunEvent] = field(default_factory=list)
    checkpoints: list[JsonObject] = field(default_factory=list)
    refuse: type[Exception] | None = None
    cancel_after: int | None = None
    """Report a cancel request from this many commits on."""

    async def commit(self, step: Step) -> bool:
        if self.refuse is not None:
            raise self.refuse("gone")
        self.steps.append(step)
        self.events.extend(step.events)
        self.checkpoints.append(step.checkpoint.model_dump(mode="json"))
        if step.tool_call is not None:
            self.intents[step.tool_call.key] = step.tool_call
        return self.cancel_after is not None and len(self.steps) >= self.cancel_after

    async def begin_tool_call(
        self, intent: ToolCallRecord, checkpoint: Checkpoint, events: Sequence[RunEvent]
    ) -> ToolCallRecord | None:
        if self.refuse is not None:
            raise self.refuse("gone")
        self.events.extend(events)
        prior = self.intents.get(intent.key)
        if prior is None:
            self.intents[intent.key] = intent
        return prior


class EchoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str


@dataclass
class CountingTool:
    """A tool that counts its calls; optionally sleeps or fails."""

    name: str
    risk: Risk = Risk.LOW
    idempotent: bool = True
    read_only: bool = False
    sleep_s: float = 0.0
    error: BaseException | None = None
    calls: int = 0

    async def run(self, args: BaseModel, ctx: ToolContext) -> str:
        self.calls += 1
        if self.sleep_s:
            await asyncio.sleep(self.sleep_s)
        if self.error is not None:
            raise self.error
        assert isinstance(args, EchoArgs)
        return f"echo:{args.text}"

    def tool(self, *, timeout_s: float = 5.0) -> Tool:
        return Tool(
            name=self.name,
            description=f"{self.name} echoes",
            args_model=EchoArgs,
            fn=self.run,
            risk=self.risk,
            idempotent=self.idempotent,
            read_only=self.read_only,
            timeout_s=timeout_s,
        )
