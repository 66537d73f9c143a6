"""What the provider client tests share: a tool, a request builder, a delta collector."""

from __future__ import annotations

from app.llm.types import LLMRequest, ToolSpec

CALCULATOR = ToolSpec(
    name="calculator",
    description="Evaluate arithmetic.",
    parameters={"type": "object", "properties": {"expression": {"type": "string"}}},
)


def request_for(provider: str, model: str, text: str, **options: object) -> LLMRequest:
    """A one-message request to `provider/model`; `options` set other LLMRequest fields."""
    return LLMRequest.model_validate(
        {
            "provider": provider,
            "model": model,
            "messages": [{"role": "user", "content": text}],
            **options,
        }
    )


class Deltas:
    """Collects streamed text chunks."""

    def __init__(self) -> None:
        self.chunks: list[str] = []

    async def __call__(self, text: str) -> None:
        self.chunks.append(text)
