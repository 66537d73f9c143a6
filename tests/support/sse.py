"""Read Server-Sent Events the way a client does: over a real connection, field by field."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import orjson

TERMINAL = {"run.completed", "run.failed", "run.cancelled"}


@dataclass
class SSEvent:
    id: str | None = None
    event: str | None = None
    data: str = ""
    retry: int | None = None
    comments: list[str] = field(default_factory=list)
    at: float = 0.0
    """When the client had it (time.monotonic)."""

    @property
    def seq(self) -> int:
        assert self.id is not None
        return int(self.id)

    def json(self) -> dict[str, object]:
        value = orjson.loads(self.data)
        assert isinstance(value, dict)
        return value


async def parse(response: httpx.Response) -> AsyncIterator[SSEvent]:
    """Events as they arrive; comment-only and retry-only blocks are yielded too."""
    current = SSEvent()
    touched = False
    async for line in response.aiter_lines():
        if line == "":
            if touched:
                current.at = time.monotonic()
                yield current
            current, touched = SSEvent(), False
            continue
        touched = True
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "":
            current.comments.append(value)
        elif name == "id":
            current.id = value
        elif name == "event":
            current.event = value
        elif name == "data":
            current.data = value if not current.data else current.data + "\n" + value
        elif name == "retry":
            current.retry = int(value)


async def collect(response: httpx.Response) -> list[SSEvent]:
    """Every event (with an id) until the stream ends."""
    return [e async for e in parse(response) if e.id is not None]
