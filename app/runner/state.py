"""The checkpoint: everything needed to continue a run in another process."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.llm.types import Message, TokenUsage, ToolCall


class RunUsage(BaseModel):
    """Totals of a run so far."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    llm_calls: int = 0
    tool_calls: int = 0

    def add_llm_call(self, usage: TokenUsage, cost_usd: float) -> None:
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cached_tokens += usage.cached_tokens
        self.cost_usd = round(self.cost_usd + cost_usd, 10)
        self.llm_calls += 1


class Checkpoint(BaseModel):
    """Committed after every LLM call and every tool call, with that call's trace row."""

    messages: list[Message] = Field(default_factory=list)
    usage: RunUsage = Field(default_factory=RunUsage)
    turn: int = 0
    """LLM calls made so far."""
    next_seq: int = 0
    """Sequence number of the next event."""
    elapsed_s: float = 0.0
    """Run time used so far (time spent waiting for approval or in the queue excluded)."""

    def unanswered_tool_calls(self) -> list[tuple[int, ToolCall]]:
        """Tool calls of the last assistant message that have no result yet, with their index."""
        for pos in range(len(self.messages) - 1, -1, -1):
            msg = self.messages[pos]
            if msg.role == "assistant":
                answered = {m.tool_call_id for m in self.messages[pos + 1 :] if m.role == "tool"}
                return [(i, c) for i, c in enumerate(msg.tool_calls) if c.id not in answered]
        return []

    def final_answer(self) -> str | None:
        """The answer, when the last message is an assistant message without tool calls."""
        if self.messages and self.messages[-1].role == "assistant":
            last = self.messages[-1]
            if not last.tool_calls:
                return last.content or ""
        return None
