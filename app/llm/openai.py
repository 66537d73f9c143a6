"""Chat Completions client for OpenAI and every OpenAI-compatible server.

vLLM, Ollama, llama.cpp and LiteLLM speak the same wire format, so one client
over the shared model HTTP client serves them all. No SDK, no retries: the retry
layer above decides what to try again.
"""

from __future__ import annotations

from contextlib import aclosing
from dataclasses import dataclass, field

import orjson

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


class OpenAIProvider:
    """A `ModelClient` over `POST {base_url}/chat/completions`."""

    def __init__(
        self,
        name: str = "openai",
        *,
        http: ModelHttp,
        base_url: str,
        api_key: str | None,
        timeout_s: float,
    ) -> None:
        self.name = name
        self._http = http
        headers = {"content-type": "application/json"}
        # Local servers (Ollama, llama.cpp) need no key; sending an empty bearer confuses some.
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._endpoint = Endpoint(
            url=base_url.rstrip("/") + "/chat/completions",
            headers=headers,
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
        body["stream_options"] = {"include_usage": True}
        stream = _StreamState(model=request.model)
        events = self._http.stream_events(self._endpoint, body)
        async with aclosing(events) as chunks:
            async for chunk in chunks:
                text = stream.add(chunk)
                if text:
                    await on_delta(text)
        return stream.response(provider=self.name)


def build_body(request: LLMRequest) -> JsonObject:
    """The Chat Completions request body for `request`."""
    body: JsonObject = {
        "model": request.model,
        "messages": [_wire_message(message) for message in request.messages],
    }
    # tool_choice without tools is a 400 on OpenAI, so both go together.
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                },
            }
            for tool in request.tools
        ]
        if request.tool_choice is not None:
            body["tool_choice"] = request.tool_choice
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.max_output_tokens is not None:
        body["max_completion_tokens"] = request.max_output_tokens
    if request.seed is not None:
        body["seed"] = request.seed
    return body


def _wire_message(message: Message) -> JsonObject:
    if message.role == "tool":
        return {
            "role": "tool",
            "tool_call_id": message.tool_call_id or "",
            "content": message.content or "",
        }
    if message.role == "assistant" and message.tool_calls:
        return {
            "role": "assistant",
            "content": message.content,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.name,
                        # Echo what the model said, even when it was not a JSON object.
                        "arguments": call.raw_arguments
                        if call.raw_arguments is not None
                        else orjson.dumps(call.arguments).decode(),
                    },
                }
                for call in message.tool_calls
            ],
        }
    return {"role": message.role, "content": message.content or ""}


def parse_response(answer: JsonObject, *, request: LLMRequest, provider: str) -> LLMResponse:
    """An `LLMResponse` from a non-streaming Chat Completions answer."""
    choices = as_objects(answer.get("choices"))
    if not choices:
        raise ProviderServerError(f"{provider} answered no choices", provider=provider)
    choice = choices[0]
    wire = as_object(choice.get("message"))
    calls = [
        _tool_call(as_str(call.get("id")), as_object(call.get("function")), index)
        for index, call in enumerate(as_objects(wire.get("tool_calls")))
    ]
    return LLMResponse(
        message=Message(
            role="assistant", content=as_str(wire.get("content")), tool_calls=tuple(calls)
        ),
        usage=plausible(parse_usage(answer.get("usage")), provider),
        finish_reason=as_str(choice.get("finish_reason")),
        model=as_str(answer.get("model")) or request.model,
    )


def _tool_call(call_id: str | None, function: JsonObject, index: int) -> ToolCall:
    raw = function.get("arguments")
    # Some compatible servers send the arguments as an object instead of JSON text.
    arguments, raw_text = (
        (raw, None) if isinstance(raw, dict) else parse_arguments(as_str(raw) or "")
    )
    return ToolCall(
        id=call_id or f"call_{index}",
        name=as_str(function.get("name")) or "",
        arguments=arguments,
        raw_arguments=raw_text,
    )


def parse_usage(value: object) -> TokenUsage:
    """`TokenUsage` from a Chat Completions `usage` object (absent means zeros)."""
    usage = as_object(value)
    return TokenUsage(
        input_tokens=as_int(usage.get("prompt_tokens")),
        output_tokens=as_int(usage.get("completion_tokens")),
        cached_tokens=as_int(as_object(usage.get("prompt_tokens_details")).get("cached_tokens")),
    )


@dataclass
class _PartialCall:
    id: str | None = None
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class _StreamState:
    """Reassembles a streamed answer from its chunks."""

    model: str
    content: list[str] = field(default_factory=list)
    calls: dict[int, _PartialCall] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: TokenUsage = field(default_factory=TokenUsage)

    def add(self, chunk: JsonObject) -> str:
        """Take in one chunk; return its text (empty if none)."""
        self.model = as_str(chunk.get("model")) or self.model
        if chunk.get("usage") is not None:  # the extra last chunk with `choices: []`
            self.usage = parse_usage(chunk.get("usage"))
        choices = as_objects(chunk.get("choices"))
        if not choices:
            return ""
        choice = choices[0]
        self.finish_reason = as_str(choice.get("finish_reason")) or self.finish_reason
        delta = as_object(choice.get("delta"))
        for position, wire in enumerate(as_objects(delta.get("tool_calls"))):
            index = wire.get("index")
            partial = self.calls.setdefault(
                index if isinstance(index, int) else position, _PartialCall()
            )
            partial.id = partial.id or as_str(wire.get("id"))
            function = as_object(wire.get("function"))
            # The name arrives whole in the first delta; some servers repeat it later.
            partial.name = partial.name or as_str(function.get("name")) or ""
            partial.arguments.append(as_str(function.get("arguments")) or "")
        text = as_str(delta.get("content")) or ""
        if text:
            self.content.append(text)
        return text

    def response(self, *, provider: str) -> LLMResponse:
        """The finished answer; a stream cut before its end is a server failure."""
        if self.finish_reason is None:
            raise ProviderServerError(
                f"{provider} stream ended before the answer did", provider=provider
            )
        calls = []
        for index in sorted(self.calls):
            partial = self.calls[index]
            arguments, raw = parse_arguments("".join(partial.arguments))
            calls.append(
                ToolCall(
                    id=partial.id or f"call_{index}",
                    name=partial.name,
                    arguments=arguments,
                    raw_arguments=raw,
                )
            )
        return LLMResponse(
            message=Message(
                role="assistant",
                content="".join(self.content) if self.content else None,
                tool_calls=tuple(calls),
            ),
            usage=plausible(self.usage, provider),
            finish_reason=self.finish_reason,
            model=self.model,
        )
