"""An OpenAI-compatible model that follows a script written in the user's message.

Stateless, so any number of worker processes (and a run resumed by another one)
get consistent answers: the reply depends only on the conversation so far.

Script: steps separated by `;`, each `nap <seconds>`, `tally <label>` or
`calc <expression>`; a leading `delay <seconds>;` holds every answer back. After
the last step the model answers `done: <n> steps`.
"""

from __future__ import annotations

import asyncio

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

JsonObject = dict[str, object]


def parse_script(text: str) -> tuple[float, list[tuple[str, JsonObject]]]:
    """(delay before each answer, tool calls to make in order)."""
    delay = 0.0
    steps: list[tuple[str, JsonObject]] = []
    for raw in text.split(";"):
        verb, _, arg = raw.strip().partition(" ")
        if verb == "delay":
            delay = float(arg)
        elif verb == "nap":
            steps.append(("nap", {"seconds": float(arg)}))
        elif verb == "tally":
            steps.append(("tally", {"label": arg.strip()}))
        elif verb == "calc":
            steps.append(("calculator", {"expression": arg.strip()}))
    return delay, steps


def answer(messages: list[JsonObject]) -> JsonObject:
    """The next assistant message for this conversation."""
    last_user = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    delay_and_steps = parse_script(str(messages[last_user].get("content") or ""))
    steps = delay_and_steps[1]
    done = sum(1 for m in messages[last_user:] if m.get("role") == "tool")
    if done >= len(steps):
        return {"role": "assistant", "content": f"done: {done} steps"}
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
    delay, _ = parse_script(str(messages[last_user].get("content") or ""))
    if delay:
        await asyncio.sleep(delay)
    message = answer(messages)
    finish = "tool_calls" if "tool_calls" in message else "stop"
    payload = {
        "id": "chatcmpl-script",
        "object": "chat.completion",
        "model": body.get("model", "script"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60},
    }
    return Response(orjson.dumps(payload), media_type="application/json")


def script_app() -> Starlette:
    """The scripted model as an ASGI app (`/v1/chat/completions`)."""
    return Starlette(routes=[Route("/v1/chat/completions", _complete, methods=["POST"])])
