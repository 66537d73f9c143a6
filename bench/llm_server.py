"""A minimal OpenAI-compatible Chat Completions server for benchmarks.

`python -m bench.llm_server --port 8101` answers every `POST .../chat/completions`
at once with the same text answer (finish reason `stop`, no tool calls) and token
usage, so an agent run against it is exactly one LLM call. `GET /stats` returns
`{"chat_completions": n}`, the number of completions answered so far.

It is a bare asyncio protocol on uvloop with its own HTTP/1.1 framing (keep-alive,
Content-Length bodies; no chunked requests, no streaming), because it shares the
machine's cores with the service under test and must cost next to nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import cast

import orjson

ANSWER_TEXT = "Hello! This is a fixed answer from the benchmark model."
PROMPT_TOKENS = 42
COMPLETION_TOKENS = 12
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_LIFETIME_S = 3600.0
"""An orphaned server stops by itself after this long."""


def _response(status: str, body: bytes, *, close: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    )
    return head.encode() + body


COMPLETION = _response(
    "200 OK",
    orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 0,
            "model": "bench-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ANSWER_TEXT},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": COMPLETION_TOKENS,
                "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            },
        }
    ),
)
NOT_FOUND = _response("404 Not Found", b'{"error":{"message":"not found"}}')
NO_STREAMING = _response(
    "400 Bad Request", b'{"error":{"message":"the benchmark server does not stream"}}'
)
TOO_LARGE = _response("413 Content Too Large", b'{"error":{"message":"too large"}}', close=True)
BAD_REQUEST = _response("400 Bad Request", b'{"error":{"message":"bad request"}}', close=True)


class Counter:
    """Completions answered by this server."""

    def __init__(self) -> None:
        self.completions = 0


class ChatProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: answers each complete request in order, keeps it open."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._transport is not None and not self._transport.is_closing():
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    self._close_with(TOO_LARGE)
                return
            head = bytes(self._buffer[:end])
            length = _content_length(head)
            if length is None or length > MAX_BODY_BYTES:
                self._close_with(BAD_REQUEST if length is None else TOO_LARGE)
                return
            total = end + 4 + length
            if len(self._buffer) < total:
                return
            body = bytes(self._buffer[end + 4 : total])
            del self._buffer[:total]
            self._transport.write(self._answer(head, body))

    def _answer(self, head: bytes, body: bytes) -> bytes:
        request_line = head.split(b"\r\n", 1)[0]
        method, _, rest = request_line.partition(b" ")
        path = rest.partition(b" ")[0].split(b"?", 1)[0]
        if method == b"POST" and path.endswith(b"/chat/completions"):
            if b'"stream":true' in body:
                return NO_STREAMING
            self._counter.completions += 1
            return COMPLETION
        if method == b"GET" and path == b"/stats":
            return _response(
                "200 OK", orjson.dumps({"chat_completions": self._counter.completions})
            )
        return NOT_FOUND

    def _close_with(self, answer: bytes) -> None:
        assert self._transport is not None
        self._transport.write(answer)
        self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


def _content_length(head: bytes) -> int | None:
    """The body length the head announces (0 when absent); None when it cannot be served."""
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            text = value.strip()
            if not text.isdigit():
                return None
            length = int(text)
        elif name == b"transfer-encoding":
            return None
    return length


async def serve(host: str, port: int, *, lifetime_s: float) -> None:
    """Serve until SIGTERM or SIGINT, or for at most `lifetime_s`."""
    loop = asyncio.get_running_loop()
    counter = Counter()
    server = await loop.create_server(
        lambda: ChatProtocol(counter), host, port, backlog=2048, reuse_address=True
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=lifetime_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lifetime", type=float, default=DEFAULT_LIFETIME_S, help="seconds")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port, lifetime_s=args.lifetime))
    else:
        uvloop.run(serve(args.host, args.port, lifetime_s=args.lifetime))


if __name__ == "__main__":
    main()
