"""Fake OpenAI and Anthropic servers on loopback for integration tests.

A real uvicorn server on 127.0.0.1 (random port) inside the test's event loop,
so the clients under test go through real sockets, HTTP and SSE framing::

    async with serve_fake_openai() as fake:
        fake.enqueue(ToolCallReply("calculator", {"expression": "2+2"}))
        provider = OpenAIProvider(http=http, base_url=fake.base_url, api_key="k", timeout_s=5)
        ...
        assert fake.requests[0]["tools"]

Each request takes the next queued reply (a plain "ok" text when the queue is
empty). Requests with `"stream": true` are answered as SSE, with text and tool
arguments cut into several chunks, the way the real APIs stream them.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from app.llm.types import JsonObject
from tests.fakes.loopback import serve_app

Flavour = Literal["openai", "anthropic"]


@dataclass(frozen=True, kw_only=True)
class Usage:
    """Token counts a reply reports."""

    input_tokens: int = 20
    """All input tokens, cached ones included (the client-side `TokenUsage` meaning)."""
    output_tokens: int = 5
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    """Anthropic only."""


@dataclass(frozen=True)
class TextReply:
    """A plain text answer."""

    text: str
    usage: Usage = Usage()
    delay_s: float = 0.0
    """How long the server waits before it answers."""


@dataclass(frozen=True)
class ToolCallReply:
    """One tool call; `arguments` given as a string are sent verbatim (e.g. invalid JSON)."""

    name: str
    arguments: JsonObject | str = field(default_factory=dict)
    call_id: str = "call_1"
    usage: Usage = Usage()


@dataclass(frozen=True)
class ErrorReply:
    """A raw HTTP answer; the body defaults to the provider's error JSON with `message`."""

    status: int
    message: str = "fake error"
    body: str | bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HangReply:
    """Never answers; the request is released when the server shuts down."""


Reply = TextReply | ToolCallReply | ErrorReply | HangReply


class FakeLLMServer:
    """The scripted server: queue replies, then inspect what the client sent."""

    def __init__(self, flavour: Flavour) -> None:
        self.flavour = flavour
        self.base_url = ""
        """OpenAI: `http://127.0.0.1:<port>/v1`; Anthropic: `http://127.0.0.1:<port>`."""
        self.requests: list[JsonObject] = []
        """JSON bodies received, in order."""
        self.headers: list[dict[str, str]] = []
        """Request headers received, in order (lower-case names)."""
        self._replies: deque[Reply] = deque()
        self._closing = asyncio.Event()
        path = "/v1/chat/completions" if flavour == "openai" else "/v1/messages"
        self.app = Starlette(routes=[Route(path, self._handle, methods=["POST"])])

    def enqueue(self, *replies: Reply) -> None:
        """Answer the next requests with `replies`, in order."""
        self._replies.extend(replies)

    async def _handle(self, request: Request) -> Response:
        body: object = orjson.loads(await request.body())
        payload: JsonObject = body if isinstance(body, dict) else {}
        self.requests.append(payload)
        self.headers.append(dict(request.headers))
        reply = self._replies.popleft() if self._replies else TextReply("ok")
        if isinstance(reply, HangReply):
            await self._closing.wait()
            return Response(status_code=503)
        if isinstance(reply, ErrorReply):
            content = reply.body if reply.body is not None else _error_body(self.flavour, reply)
            return Response(
                content, reply.status, headers=dict(reply.headers), media_type="application/json"
            )
        if isinstance(reply, TextReply) and reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        model = str(payload.get("model", "fake-model"))
        if payload.get("stream") is True:
            if self.flavour == "openai":
                options = payload.get("stream_options")
                usage = isinstance(options, dict) and options.get("include_usage") is True
                frames = _openai_frames(reply, model, include_usage=usage)
            else:
                frames = _anthropic_frames(reply, model)
            return StreamingResponse(_send(frames), media_type="text/event-stream")
        answer = (
            _openai_json(reply, model)
            if self.flavour == "openai"
            else _anthropic_json(reply, model)
        )
        return Response(orjson.dumps(answer), media_type="application/json")


@asynccontextmanager
async def serve_fake_openai() -> AsyncIterator[FakeLLMServer]:
    """Run a fake Chat Completions server for the duration of the block."""
    async with _serve(FakeLLMServer("openai")) as fake:
        yield fake


@asynccontextmanager
async def serve_fake_anthropic() -> AsyncIterator[FakeLLMServer]:
    """Run a fake Anthropic Messages server for the duration of the block."""
    async with _serve(FakeLLMServer("anthropic")) as fake:
        yield fake


@asynccontextmanager
async def _serve(fake: FakeLLMServer) -> AsyncIterator[FakeLLMServer]:
    async with serve_app(fake.app) as root:
        fake.base_url = f"{root}/v1" if fake.flavour == "openai" else root
        try:
            yield fake
        finally:
            fake._closing.set()  # release hanging requests so shutdown does not wait on them


async def _send(frames: list[str]) -> AsyncIterator[str]:
    for frame in frames:
        yield frame
        await asyncio.sleep(0)  # separate writes, so the client sees real chunking


def _pieces(text: str, count: int = 3) -> list[str]:
    size = max(1, math.ceil(len(text) / count))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _arguments_text(reply: ToolCallReply) -> str:
    if isinstance(reply.arguments, str):
        return reply.arguments
    return orjson.dumps(reply.arguments).decode()


def _error_body(flavour: Flavour, reply: ErrorReply) -> bytes:
    error = {"type": "fake_error", "message": reply.message}
    if flavour == "anthropic":
        return orjson.dumps({"type": "error", "error": error})
    return orjson.dumps({"error": {**error, "code": None}})


def _openai_usage(usage: Usage) -> JsonObject:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def _openai_json(reply: TextReply | ToolCallReply, model: str) -> JsonObject:
    message: JsonObject = {"role": "assistant", "content": None}
    if isinstance(reply, TextReply):
        message["content"] = reply.text
    else:
        function = {"name": reply.name, "arguments": _arguments_text(reply)}
        message["tool_calls"] = [{"id": reply.call_id, "type": "function", "function": function}]
    finish = "stop" if isinstance(reply, TextReply) else "tool_calls"
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": _openai_usage(reply.usage),
    }


def _openai_frames(
    reply: TextReply | ToolCallReply, model: str, *, include_usage: bool
) -> list[str]:
    base: JsonObject = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model}

    def chunk(delta: JsonObject, finish: str | None = None) -> JsonObject:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    if isinstance(reply, TextReply):
        chunks += [chunk({"content": piece}) for piece in _pieces(reply.text)]
        chunks.append(chunk({}, "stop"))
    else:
        first = {"index": 0, "id": reply.call_id, "type": "function"}
        chunks.append(
            chunk({"tool_calls": [{**first, "function": {"name": reply.name, "arguments": ""}}]})
        )
        for piece in _pieces(_arguments_text(reply)):
            chunks.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
        chunks.append(chunk({}, "tool_calls"))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": _openai_usage(reply.usage)})
    frames = [f"data: {orjson.dumps(c).decode()}\n\n" for c in chunks]
    return [*frames, "data: [DONE]\n\n"]


def _anthropic_usage(usage: Usage) -> JsonObject:
    return {
        "input_tokens": usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
    }


def _anthropic_json(reply: TextReply | ToolCallReply, model: str) -> JsonObject:
    if isinstance(reply, TextReply):
        block: JsonObject = {"type": "text", "text": reply.text}
    else:
        block = {
            "type": "tool_use",
            "id": reply.call_id,
            "name": reply.name,
            "input": reply.arguments,
        }
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [block],
        "stop_reason": "end_turn" if isinstance(reply, TextReply) else "tool_use",
        "usage": _anthropic_usage(reply.usage),
    }


def _anthropic_frames(reply: TextReply | ToolCallReply, model: str) -> list[str]:
    start_usage = {**_anthropic_usage(reply.usage), "output_tokens": 1}
    message = {"id": "msg_fake", "type": "message", "role": "assistant", "model": model}
    events: list[JsonObject] = [
        {"type": "message_start", "message": {**message, "content": [], "usage": start_usage}},
        {"type": "ping"},
    ]
    if isinstance(reply, TextReply):
        block: JsonObject = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(reply.text)]
        stop_reason = "end_turn"
    else:
        block = {"type": "tool_use", "id": reply.call_id, "name": reply.name, "input": {}}
        deltas = [
            {"type": "input_json_delta", "partial_json": piece}
            for piece in _pieces(_arguments_text(reply))
        ]
        stop_reason = "tool_use"
    events.append({"type": "content_block_start", "index": 0, "content_block": block})
    events += [{"type": "content_block_delta", "index": 0, "delta": d} for d in deltas]
    events += [
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": reply.usage.output_tokens},
        },
        {"type": "message_stop"},
    ]
    return [f"event: {e['type']}\ndata: {orjson.dumps(e).decode()}\n\n" for e in events]
