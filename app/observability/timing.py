"""Time to first token, measured at the provider: the one place that sees each streamed
request leave and its first chunk come back (every retry and fallback link included)."""

from __future__ import annotations

import time

from app.llm.types import DeltaCallback, LLMRequest, LLMResponse, ModelClient
from app.observability.metrics import LLM_TTFT


class FirstTokenTimer:
    """A provider client that observes `agentsvc_llm_time_to_first_token_seconds` for every
    streamed call that yields text (calls without `on_delta` are not streamed)."""

    def __init__(self, inner: ModelClient) -> None:
        self._inner = inner
        self.name = inner.name

    async def complete(
        self, request: LLMRequest, *, on_delta: DeltaCallback | None = None
    ) -> LLMResponse:
        if on_delta is None:
            return await self._inner.complete(request)
        started = time.monotonic()
        first = True

        async def timed(text: str) -> None:
            nonlocal first
            if first:
                first = False
                LLM_TTFT.labels(self.name, request.model).observe(time.monotonic() - started)
            await on_delta(text)

        return await self._inner.complete(request, on_delta=timed)
