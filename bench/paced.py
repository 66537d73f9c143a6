"""Open-loop HTTP load: POST at a fixed rate, whatever the answers do (unlike wrk).

Request i leaves at start + i / rate over keep-alive connections from a small pool
(a new one only when every open one is busy), so a slow server sees the same arrival
rate, and the client is not the bottleneck: a bare asyncio HTTP/1.1 client on uvloop
that costs tens of microseconds per request. The caller gets the answers' latency,
the sends that left late, and the CPU the client used.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime

MAX_CONNECTIONS = 64
LATE_S = 0.005
"""A send that leaves more than this after its slot counts as late."""
MAX_IDLE_S = 2.0
"""Connections idle longer are closed, well before uvicorn's 5 s keep-alive timeout
could close one under a request."""


@dataclass(frozen=True, kw_only=True)
class Paced:
    """What to send, how often and for how long."""

    port: int
    path: str
    body: dict[str, object]
    api_key: str
    rate: float
    """Requests per second."""
    warmup_s: float
    duration_s: float
    timeout_s: float = 10.0


@dataclass(frozen=True, kw_only=True)
class PacedResult:
    """Answers of the measured part (after the warm-up)."""

    measured_from: datetime
    """UTC time the measured part began; runs created from then on are measured."""
    measured_until: datetime
    sent: int
    answered: int
    errors: dict[str, int]
    """Failed sends by kind: `HTTP 503`, `TimeoutError`, `connect: ConnectionRefusedError`…"""
    late: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    client_cpu_s: float
    """CPU this process used over warm-up and measured part together."""
    client_wall_s: float

    @property
    def per_second(self) -> float:
        return self.sent / self.duration_s if self.duration_s else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def run_paced(paced: Paced) -> PacedResult:
    """Send for `warmup_s + duration_s` (each request bounded by `timeout_s`)."""
    cpu, wall = time.process_time(), time.monotonic()
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(_Client(paced).run())
    else:
        result = uvloop.run(_Client(paced).run())
    return _with_cpu(result, time.process_time() - cpu, time.monotonic() - wall)


def _with_cpu(r: PacedResult, cpu_s: float, wall_s: float) -> PacedResult:
    return PacedResult(
        measured_from=r.measured_from,
        measured_until=r.measured_until,
        sent=r.sent,
        answered=r.answered,
        errors=r.errors,
        late=r.late,
        duration_s=r.duration_s,
        p50_ms=r.p50_ms,
        p99_ms=r.p99_ms,
        client_cpu_s=cpu_s,
        client_wall_s=wall_s,
    )


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Client:
    def __init__(self, paced: Paced) -> None:
        self._paced = paced
        body = json.dumps(paced.body, separators=(",", ":")).encode()
        head = (
            f"POST {paced.path} HTTP/1.1\r\nHost: 127.0.0.1:{paced.port}\r\n"
            f"Authorization: Bearer {paced.api_key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self._request = head.encode() + body
        self._idle: list[tuple[Connection, float]] = []
        """Open connections no request uses, with the time each became idle."""
        self._open = 0
        self._freed = asyncio.Event()
        self._latencies: list[float] = []
        self._errors: collections.Counter[str] = collections.Counter()

    async def run(self) -> PacedResult:
        p = self._paced
        interval = 1.0 / p.rate
        warm = round(p.warmup_s * p.rate)
        total = warm + round(p.duration_s * p.rate)
        tasks: set[asyncio.Task[None]] = set()
        late = 0
        start = time.monotonic() + 0.05
        measured_from = datetime.now(UTC)
        for i in range(total):
            slot = start + i * interval
            if i == warm:
                measured_from = datetime.now(UTC)
                self._errors.clear()
                late = 0
            delay = slot - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            conn = await self._acquire(slot + p.timeout_s)
            if time.monotonic() - slot > LATE_S:
                late += 1
            if conn is None:
                continue
            task = asyncio.create_task(self._send(conn, measured=i >= warm))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        measured_until = datetime.now(UTC)
        if tasks:
            await asyncio.wait(tasks, timeout=p.timeout_s + 1)
        for (_, writer), _ in self._idle:
            writer.close()
        latencies = sorted(self._latencies)
        return PacedResult(
            measured_from=measured_from,
            measured_until=measured_until,
            sent=total - warm,
            answered=len(latencies),
            errors=dict(self._errors),
            late=late,
            duration_s=(measured_until - measured_from).total_seconds(),
            p50_ms=1000 * percentile(latencies, 0.50),
            p99_ms=1000 * percentile(latencies, 0.99),
            client_cpu_s=0.0,
            client_wall_s=0.0,
        )

    async def _acquire(self, deadline: float) -> Connection | None:
        """An idle connection, a new one while fewer than MAX_CONNECTIONS are open, or
        the next one freed; None (an error counted) when none comes before `deadline`."""
        while True:
            while self._idle:
                (reader, writer), idle_since = self._idle.pop()
                fresh = time.monotonic() - idle_since < MAX_IDLE_S
                if fresh and not reader.at_eof() and not writer.is_closing():
                    return reader, writer
                self._open -= 1
                writer.close()
            if self._open < MAX_CONNECTIONS:
                self._open += 1
                try:
                    async with asyncio.timeout(self._paced.timeout_s):
                        return await asyncio.open_connection("127.0.0.1", self._paced.port)
                except (OSError, TimeoutError) as exc:
                    self._open -= 1
                    self._errors[f"connect: {type(exc).__name__}"] += 1
                    return None
            self._freed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._errors[f"all {MAX_CONNECTIONS} connections busy"] += 1
                return None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._freed.wait()

    async def _send(self, conn: Connection, *, measured: bool) -> None:
        reader, writer = conn
        sent = time.monotonic()
        try:
            async with asyncio.timeout(self._paced.timeout_s):
                writer.write(self._request)
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(_content_length(head))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            self._errors[type(exc).__name__] += 1
            self._open -= 1
            writer.close()
            self._freed.set()
            return
        if not head.startswith(b"HTTP/1.1 2"):
            self._errors[f"HTTP {head[9:12].decode(errors='replace')}"] += 1
        elif measured:
            self._latencies.append(time.monotonic() - sent)
        self._idle.append((conn, time.monotonic()))
        self._freed.set()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    raise ValueError("no content-length in the answer")


def percentile(ordered: list[float], q: float) -> float:
    """The q-quantile (0..1) of sorted values, linearly interpolated; 0 when empty."""
    if not ordered:
        return 0.0
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
