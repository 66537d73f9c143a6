"""An OpenAI-compatible model that follows a script written in the user's message.

Stateless, so any number of worker processes (and a run resumed by another one)
get consistent answers: the reply depends only on the conversation so far.

Script: steps separated by `;`, each `nap <seconds>`, `tally <label>` or
`calc <expression>`; a leading `delay <seconds>;` holds every answer back. After
the last step the model answers `done: <n> steps`, or the words of `say <words>`.
Streamed requests (`"stream": true`) get the answer one word per chunk (or `chunk
<n>` characters per chunk), `pace <seconds>` apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

JsonObject = dict[str, object]


@dataclass(frozen=True)
class Script:
    delay: float
    """Seconds before each answer."""
    steps: list[tuple[str, JsonObject]]
    """Tool calls to make, in order."""
    say: str | None = None
    pace: float = 0.0
    chunk: int = 0
    """Characters per streamed chunk; 0: one word per chunk."""


def parse_script(text: str) -> Script:
    delay = pace = 0.0
    chunk = 0
    say: str | None = None
    steps: list[tuple[str, JsonObject]] = []
    for raw in text.split(";"):
        verb, _, arg = raw.strip().partition(" ")
        if verb == "delay":
            delay = float(arg)
        elif verb == "pace":
            pace = float(arg)
        elif verb == "chunk":
            chunk = int(arg)
        elif verb == "say":
            say = arg.strip()
        elif verb == "nap":
            steps.append(("nap", {"seconds": float(arg)}))
        elif verb == "tally":
            steps.append(("tally", {"label": arg.strip()}))
        elif verb == "calc":
            steps.append(("calculator", {"expression": arg.strip()}))
    return Script(delay, steps, say, pace, chunk)


def answer(messages: list[JsonObject]) -> JsonObject:
    """The next assistant message for this conversation."""
    last_user = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    script = parse_script(str(messages[last_user].get("content") or ""))
    steps = script.steps
    done = sum(1 for m in messages[last_user:] if m.get("role") == "tool")
    if done >= len(steps):
        return {"role": "assistant", "content": script.say or f"done: {done} steps"}
    name, arguments = steps[done]
    call = {
        "id": f"call_{done}",
        "type": "function",
        "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
    }
    return {"role": "assistant", "content": None, "tool_calls": [call]}


async def _complete(request: Request) -> Response:
    body = orjson.loads(await request.body())
    messages: list[JsonObject] = body["messages"]
    last_user = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    script = parse_script(str(messages[last_user].get("content") or ""))
    if script.delay:
        await asyncio.sleep(script.delay)
    message = answer(messages)
    finish = "tool_calls" if "tool_calls" in message else "stop"
    if body.get("stream") is True:
        frames = _frames(message, finish, str(body.get("model", "script")), script)
        return StreamingResponse(frames, media_type="text/event-stream")
    payload = {
        "id": "chatcmpl-script",
        "object": "chat.completion",
        "model": body.get("model", "script"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60},
    }
    return Response(orjson.dumps(payload), media_type="application/json")


def _pieces(text: str, size: int) -> list[str]:
    if size > 0:
        return [text[i : i + size] for i in range(0, len(text), size)]
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


async def _frames(
    message: JsonObject, finish: str, model: str, script: Script
) -> AsyncIterator[bytes]:
    """The answer as Chat Completions chunks, `script.pace` seconds apart."""

    def frame(delta: JsonObject, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        chunk = {"id": "chatcmpl-script", "object": "chat.completion.chunk", "model": model}
        return b"data: " + orjson.dumps(chunk | {"choices": [choice]}) + b"\n\n"

    content = message.get("content")
    if isinstance(content, str):
        for i, piece in enumerate(_pieces(content, script.chunk)):
            if i and script.pace:
                await asyncio.sleep(script.pace)
            yield frame({"content": piece})
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        yield frame({"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]})
    yield frame({}, finish)
    usage = {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60}
    chunk = {"id": "chatcmpl-script", "object": "chat.completion.chunk", "model": model}
    yield b"data: " + orjson.dumps(chunk | {"choices": [], "usage": usage}) + b"\n\n"
    yield b"data: [DONE]\n\n"


def script_app() -> Starlette:
    """The scripted model as an ASGI app (`/v1/chat/completions`)."""
    return Starlette(routes=[Route("/v1/chat/completions", _complete, methods=["POST"])])
