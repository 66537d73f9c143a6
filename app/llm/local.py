"""`local`: an offline, deterministic model for demos and tests. No I/O.

It follows a few rules over the last user message to call the example tools
(calculator, current_time, read_file, write_file, delete_file, http_get) when
the request offers them, turns tool results into a final sentence, and reports
token usage the way a real provider does (about four characters a token).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import orjson

from app.llm.types import (
    DeltaCallback,
    JsonObject,
    LLMRequest,
    LLMResponse,
    Message,
    TokenUsage,
    ToolCall,
)

TOOL_ERROR_PREFIX = "error:"
"""A tool message starting with this (any case) reports a failure; so does `{"error": ...}`."""

_MAX_ECHO_CHARS = 200
_MAX_RESULT_CHARS = 500
_WORDS_PER_CHUNK = 3

_TRAILING_PUNCTUATION = ".,;:!?)\"'`"
_URL = re.compile(r"https?://[^\s\"'<>]+")
_FETCH = re.compile(r"\b(?:fetch|get)\b", re.IGNORECASE)
_WRITE = re.compile(
    r"\bwrite\s+(?P<content>.+?)\s+to\s+(?:the\s+)?(?:file\s+)?(?P<path>\S+)\s*$",
    re.IGNORECASE | re.DOTALL,
)
_DELETE = re.compile(r"\bdelete\s+(?:the\s+)?(?:file\s+)?(?P<path>\S+)", re.IGNORECASE)
_READ = re.compile(r"\bread\s+(?:the\s+)?(?:file\s+)?(?P<path>\S+)", re.IGNORECASE)
_TIME = re.compile(r"\b(?:time|date)\b", re.IGNORECASE)
_ZONE = re.compile(r"\b[A-Z][A-Za-z_]+(?:/[A-Z][A-Za-z0-9_+\-]+)+")
# "17 x 23" and "17×23" mean multiplication only between operands.
_TIMES_SIGN = re.compile(r"(?<=[\d)])\s*[x×]\s*(?=[\d(])")
_EXPRESSION_CHARS = re.compile(r"[\d\s+\-*/%().]+")
_BINARY_OPERATION = re.compile(r"[\d)]\s*(?:\*\*|[+\-*/%])\s*[\d(.\-]")

ToolRule = Callable[[str], JsonObject | None]


class LocalProvider:
    """A `ModelClient` that answers by rule, the same way every time."""

    def __init__(self, name: str = "local") -> None:
        self.name = name

    async def complete(
        self, request: LLMRequest, *, on_delta: DeltaCallback | None = None
    ) -> LLMResponse:
        """Answer `request` by rule; send the answer text to `on_delta` in word chunks."""
        message = answer(request)
        if on_delta is not None and message.content:
            for chunk in split_chunks(message.content):
                await on_delta(chunk)
        return LLMResponse(
            message=message,
            usage=TokenUsage(
                input_tokens=_tokens(_request_chars(request)),
                output_tokens=_tokens(_message_chars(message)),
            ),
            finish_reason="tool_calls" if message.tool_calls else "stop",
            model=request.model,
        )


def answer(request: LLMRequest) -> Message:
    """The assistant message the local model gives to `request`."""
    messages = request.messages
    if messages and messages[-1].role == "tool":
        return Message(role="assistant", content=_summarize_results(messages))
    text = next((m.content or "" for m in reversed(messages) if m.role == "user"), "").strip()
    offered = {tool.name for tool in request.tools} if request.tool_choice != "none" else set()
    for tool_name, rule in _RULES:
        if tool_name not in offered:
            continue
        arguments = rule(text)
        if arguments is not None:
            turn = 1 + sum(1 for m in messages if m.role == "assistant")
            call = ToolCall(id=f"call_{turn}_0", name=tool_name, arguments=arguments)
            return Message(role="assistant", tool_calls=(call,))
    return Message(role="assistant", content=f"You said: {_shorten(text, _MAX_ECHO_CHARS)}")


def split_chunks(text: str) -> list[str]:
    """`text` cut on word boundaries into chunks of a few words; they join back to `text`."""
    words = re.split(r"(?<=\s)(?=\S)", text)
    return [
        "".join(words[i : i + _WORDS_PER_CHUNK]) for i in range(0, len(words), _WORDS_PER_CHUNK)
    ]


def _summarize_results(messages: tuple[Message, ...]) -> str:
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    recent = messages[last_user + 1 :]
    names = {call.id: call.name for m in recent for call in m.tool_calls}
    sentences = []
    for message in recent:
        if message.role != "tool":
            continue
        name = message.name or names.get(message.tool_call_id or "", "the tool")
        result = (message.content or "").strip()
        failure = _failure_text(result)
        if failure is not None:
            sentences.append(f"The tool failed: {failure}")
        elif name == "calculator":
            sentences.append(f"The result is {result}.")
        else:
            sentences.append(f"{name} returned: {_shorten(result, _MAX_RESULT_CHARS)}")
    return " ".join(sentences)


def _failure_text(result: str) -> str | None:
    if result.lower().startswith(TOOL_ERROR_PREFIX):
        return result[len(TOOL_ERROR_PREFIX) :].strip()
    if result.startswith("{"):
        try:
            value: object = orjson.loads(result)
        except orjson.JSONDecodeError:
            return None
        if isinstance(value, dict) and "error" in value:
            return str(value["error"])
    return None


def _http_get(text: str) -> JsonObject | None:
    url = _URL.search(text)
    if url is None or not _FETCH.search(text):
        return None
    return {"url": url.group().rstrip(_TRAILING_PUNCTUATION)}


def _write_file(text: str) -> JsonObject | None:
    match = _WRITE.search(text)
    if match is None:
        return None
    return {"path": _clean_path(match["path"]), "content": _unquote(match["content"].strip())}


def _delete_file(text: str) -> JsonObject | None:
    match = _DELETE.search(text)
    return None if match is None else {"path": _clean_path(match["path"])}


def _read_file(text: str) -> JsonObject | None:
    match = _READ.search(text)
    return None if match is None else {"path": _clean_path(match["path"])}


def _current_time(text: str) -> JsonObject | None:
    if not _TIME.search(text):
        return None
    zone = _ZONE.search(text)
    return {"timezone": zone.group() if zone else "UTC"}


def _calculator(text: str) -> JsonObject | None:
    candidates = [
        expression.strip().rstrip(" .(").lstrip(" )")
        for expression in _EXPRESSION_CHARS.findall(_TIMES_SIGN.sub("*", text))
    ]
    expressions = [c for c in candidates if _BINARY_OPERATION.search(c)]
    if not expressions:
        return None
    return {"expression": max(expressions, key=len)}


# Order matters: a URL or a file name can hold digits that look like arithmetic,
# and a date like 2024-01-05 would otherwise be a subtraction.
_RULES: tuple[tuple[str, ToolRule], ...] = (
    ("http_get", _http_get),
    ("write_file", _write_file),
    ("delete_file", _delete_file),
    ("read_file", _read_file),
    ("current_time", _current_time),
    ("calculator", _calculator),
)


def _clean_path(path: str) -> str:
    return path.lstrip("\"'`").rstrip(_TRAILING_PUNCTUATION)


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        return text[1:-1]
    return text


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _request_chars(request: LLMRequest) -> int:
    tools = sum(
        len(t.name) + len(t.description) + len(orjson.dumps(t.parameters)) for t in request.tools
    )
    return tools + sum(_message_chars(m) for m in request.messages)


def _message_chars(message: Message) -> int:
    calls = sum(len(c.name) + len(orjson.dumps(c.arguments)) for c in message.tool_calls)
    return len(message.content or "") + calls


def _tokens(chars: int) -> int:
    return max(1, math.ceil(chars / 4))
