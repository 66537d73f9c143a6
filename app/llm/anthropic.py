"""Anthropic Messages API client (`POST {base_url}/v1/messages`), no SDK, no retries.

Translates the Chat Completions-shaped `Message`s: system text moves to the
top-level `system`, tool calls become `tool_use` blocks and tool results
`tool_result` blocks inside a user turn.
"""

from __future__ import annotations

from contextlib import aclosing
from dataclasses import dataclass, field

from app.llm.errors import ProviderServerError
from app.llm.types import (
    DeltaCallback,
    JsonObject,
    LLMRequest,
    LLMResponse,
    Message,
    TokenUsage,
    ToolCall,
)
from app.llm.wire import (
    Endpoint,
    ModelHttp,
    as_int,
    as_object,
    as_objects,
    as_str,
    parse_arguments,
    plausible,
)

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
"""The API requires `max_tokens`; used when the request sets none."""

_TOOL_CHOICE: dict[str, JsonObject] = {
    "auto": {"type": "auto"},
    "none": {"type": "none"},
    "required": {"type": "any"},
}


class AnthropicProvider:
    """A `ModelClient` over the Anthropic Messages API."""

    def __init__(
        self,
        name: str = "anthropic",
        *,
        http: ModelHttp,
        base_url: str = "https://api.anthropic.com",
        api_key: str,
        timeout_s: float,
    ) -> None:
        self.name = name
        self._http = http
        self._endpoint = Endpoint(
            url=base_url.rstrip("/") + "/v1/messages",
            headers={
                "content-type": "application/json",
                "x-api-key": api_key,
                "anthropic-version": ANTHROPIC_VERSION,
            },
            timeout_s=timeout_s,
            provider=name,
        )

    async def complete(
        self, request: LLMRequest, *, on_delta: DeltaCallback | None = None
    ) -> LLMResponse:
        """Answer `request`; stream and call `on_delta` with text chunks when it is given."""
        body = build_body(request)
        if on_delta is None:
            answer = await self._http.post_json(self._endpoint, body)
            return parse_response(answer, request=request, provider=self.name)
        body["stream"] = True
        stream = _StreamState(model=request.model)
        events = self._http.stream_events(self._endpoint, body)
        async with aclosing(events) as received:
            async for event in received:
                text = stream.add(event)
                if text:
                    await on_delta(text)
        return stream.response(provider=self.name)


def build_body(request: LLMRequest) -> JsonObject:
    """The Messages API request body for `request` (without `stream`)."""
    system = "\n\n".join(m.content for m in request.messages if m.role == "system" and m.content)
    body: JsonObject = {
        "model": request.model,
        "max_tokens": request.max_output_tokens or DEFAULT_MAX_TOKENS,
        "messages": _wire_messages(request.messages),
    }
    if system:
        body["system"] = system
    if request.tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in request.tools
        ]
        if request.tool_choice is not None:
            body["tool_choice"] = _TOOL_CHOICE[request.tool_choice]
    if request.temperature is not None:
        body["temperature"] = request.temperature
    # The Messages API has no `seed`; it is left out rather than rejected.
    return body


def _wire_messages(messages: tuple[Message, ...]) -> list[JsonObject]:
    turns: list[JsonObject] = []
    blocks_of_last: list[JsonObject] = []
    for message in messages:
        if message.role == "system":
            continue
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _blocks(message)
        if not blocks:
            continue  # the API rejects empty content
        # Tool results and a following user text share one user turn: roles must alternate.
        if turns and turns[-1]["role"] == role:
            blocks_of_last.extend(blocks)
            continue
        blocks_of_last = blocks
        turns.append({"role": role, "content": blocks_of_last})
    return turns


def _blocks(message: Message) -> list[JsonObject]:
    if message.role == "tool":
        return [
            {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id or "",
                "content": message.content or "",
            }
        ]
    blocks: list[JsonObject] = []
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    for call in message.tool_calls:
        blocks.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
        )
    return blocks


def parse_response(answer: JsonObject, *, request: LLMRequest, provider: str) -> LLMResponse:
    """An `LLMResponse` from a non-streaming Messages API answer."""
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in as_objects(answer.get("content")):
        kind = block.get("type")
        if kind == "text":
            texts.append(as_str(block.get("text")) or "")
        elif kind == "tool_use":
            calls.append(
                ToolCall(
                    id=as_str(block.get("id")) or f"call_{len(calls)}",
                    name=as_str(block.get("name")) or "",
                    arguments=as_object(block.get("input")),
                )
            )
    return LLMResponse(
        message=Message(
            role="assistant", content="".join(texts) if texts else None, tool_calls=tuple(calls)
        ),
        usage=plausible(parse_usage(as_object(answer.get("usage"))), provider),
        finish_reason=as_str(answer.get("stop_reason")),
        model=as_str(answer.get("model")) or request.model,
    )


def parse_usage(usage: JsonObject) -> TokenUsage:
    """`TokenUsage` from an Anthropic `usage` object; input counts cache reads and writes."""
    cache_read = as_int(usage.get("cache_read_input_tokens"))
    cache_write = as_int(usage.get("cache_creation_input_tokens"))
    return TokenUsage(
        # Anthropic's `input_tokens` counts only the tokens after the last cache breakpoint.
        input_tokens=as_int(usage.get("input_tokens")) + cache_read + cache_write,
        output_tokens=as_int(usage.get("output_tokens")),
        cached_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


@dataclass
class _Block:
    kind: str
    id: str = ""
    name: str = ""
    parts: list[str] = field(default_factory=list)


@dataclass
class _StreamState:
    """Reassembles a streamed answer from its events."""

    model: str
    blocks: dict[int, _Block] = field(default_factory=dict)
    usage: JsonObject = field(default_factory=dict)
    stop_reason: str | None = None

    def add(self, event: JsonObject) -> str:
        """Take in one event; return its text (empty if none)."""
        kind = event.get("type")
        index = as_int(event.get("index"))
        if kind == "message_start":
            message = as_object(event.get("message"))
            self.model = as_str(message.get("model")) or self.model
            self._take_usage(message.get("usage"))
        elif kind == "content_block_start":
            block = as_object(event.get("content_block"))
            self.blocks[index] = _Block(
                kind=as_str(block.get("type")) or "",
                id=as_str(block.get("id")) or "",
                name=as_str(block.get("name")) or "",
            )
        elif kind == "content_block_delta":
            delta = as_object(event.get("delta"))
            block_state = self.blocks.setdefault(index, _Block(kind="text"))
            text = as_str(delta.get("text")) or ""
            block_state.parts.append(text or as_str(delta.get("partial_json")) or "")
            return text if delta.get("type") == "text_delta" else ""
        elif kind == "message_delta":
            self.stop_reason = as_str(as_object(event.get("delta")).get("stop_reason"))
            self._take_usage(event.get("usage"))
        return ""

    def _take_usage(self, value: object) -> None:
        # message_delta counts are cumulative and supersede message_start's; nulls do not.
        self.usage.update({k: v for k, v in as_object(value).items() if v is not None})

    def response(self, *, provider: str) -> LLMResponse:
        """The finished answer; a stream cut before its end is a server failure."""
        if self.stop_reason is None:
            raise ProviderServerError(
                f"{provider} stream ended before the answer did", provider=provider
            )
        texts: list[str] = []
        calls: list[ToolCall] = []
        for index in sorted(self.blocks):
            block = self.blocks[index]
            if block.kind == "text":
                texts.append("".join(block.parts))
            elif block.kind == "tool_use":
                arguments, raw = parse_arguments("".join(block.parts))
                calls.append(
                    ToolCall(
                        id=block.id or f"call_{index}",
                        name=block.name,
                        arguments=arguments,
                        raw_arguments=raw,
                    )
                )
        return LLMResponse(
            message=Message(
                role="assistant",
                content="".join(texts) if texts else None,
                tool_calls=tuple(calls),
            ),
            usage=plausible(parse_usage(self.usage), provider),
            finish_reason=self.stop_reason,
            model=self.model,
        )
