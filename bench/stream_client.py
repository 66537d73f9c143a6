"""A client process that holds many HTTP connections to one server, for `bench.stream_bench`.

    python -m bench.stream_client --port P healthz --count N
    python -m bench.stream_client --port P --key K stream --ids FILE

`healthz`: each connection sends one keep-alive `GET /healthz`, reads the answer and stays
open, idle. `stream`: each connection sends `GET /agent/stream/{id}` (one per line of FILE,
repeated ids give several subscribers of one run) and is established once the run's first
event (id 0) arrived; then it keeps reading, recording the sequence of every later event
and its latency (receive time minus the `sent_at` in its data, same host clock).

It prints one JSON line when every connection is established (or failed), then answers
JSON commands read from stdin, one per line: `{"cmd": "status"}`, `{"cmd": "collect",
"last_seq": E, "timeout_s": T}` (waits until every stream has event E, then checks order
and summarises latencies) and `{"cmd": "exit"}` (closes every connection with a reset, so
no TIME_WAIT is left behind, and exits). A bare asyncio protocol on uvloop with its own
HTTP/1.1 and SSE parsing: it shares two cores with the server it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import resource
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import orjson
import uvloop

from bench.paced import percentile

OPEN_TIMEOUT_S = 60.0
_LINGER_RESET = struct.pack("ii", 1, 0)


class Conn(asyncio.Protocol):
    """One connection: its request, the answer's framing, and the SSE events on it."""

    def __init__(self, request: bytes, *, stream: bool, latencies: list[tuple[int, float]]) -> None:
        self.request = request
        self.stream = stream
        self.latencies = latencies
        self.established: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.seqs: list[int] = []
        """Sequences of the events after the first, in arrival order."""
        self.closed = False
        self._buf = bytearray()
        self._head_done = False
        self._chunked = False
        self._body_left = 0
        self._sse = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._head_done and not self._read_head():
            return
        if not self.stream:
            self._body_left -= len(self._buf)
            self._buf.clear()
            if self._body_left <= 0:
                self._establish()
            return
        self._read_body(time.time())

    def _read_head(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self._buf[:end]).lower()
        del self._buf[: end + 4]
        self._head_done = True
        if not head.startswith(b"http/1.1 200"):
            self._fail(f"HTTP {head[9:12].decode(errors='replace')}")
            return False
        self._chunked = b"transfer-encoding: chunked" in head
        for line in head.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                self._body_left = int(line.split(b":", 1)[1])
        return True

    def _read_body(self, now: float) -> None:
        buf = self._buf
        if not self._chunked:
            self._sse += buf.replace(b"\r\n", b"\n")
            buf.clear()
        while self._chunked:
            end = buf.find(b"\r\n")
            if end < 0:
                break
            size = int(bytes(buf[:end]).split(b";")[0], 16)
            if len(buf) < end + 2 + size + 2:
                break
            self._sse += buf[end + 2 : end + 2 + size].replace(b"\r\n", b"\n")
            del buf[: end + 2 + size + 2]
            if size == 0:
                break
        while (cut := self._sse.find(b"\n\n")) >= 0:
            block = bytes(self._sse[:cut])
            del self._sse[: cut + 2]
            self._event(block, now)

    def _event(self, block: bytes, now: float) -> None:
        seq: int | None = None
        data = b""
        for line in block.split(b"\n"):
            if line.startswith(b"id:"):
                seq = int(line[3:])
            elif line.startswith(b"data:"):
                data = line[5:].strip()
        if seq is None:
            return  # the retry hint, or a ping comment
        if not self.established.done():
            self._establish()
            return
        self.seqs.append(seq)
        sent_at = orjson.loads(data).get("sent_at") if data else None
        if isinstance(sent_at, float):
            self.latencies.append((seq, now - sent_at))

    def _establish(self) -> None:
        if not self.established.done():
            self.established.set_result(None)

    def _fail(self, why: str) -> None:
        if not self.established.done():
            self.established.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail("closed by the server")


class Client:
    """Every connection of this process and what they received."""

    def __init__(self, port: int, requests: list[bytes], *, stream: bool, parallel: int) -> None:
        self.port = port
        self.requests = requests
        self.stream = stream
        self.parallel = parallel
        self.conns: list[Conn] = []
        self.latencies: list[tuple[int, float]] = []
        """(sequence, seconds) of every delivery with a `sent_at`."""
        self.errors: collections.Counter[str] = collections.Counter()

    async def open_all(self) -> dict[str, object]:
        """Open every connection, at most `parallel` being established at once."""
        started = time.monotonic()
        todo = iter(self.requests)
        await asyncio.gather(*(self._opener(todo) for _ in range(self.parallel)))
        return {
            "ready": True,
            "opened": len(self.conns),
            "failed": sum(self.errors.values()),
            "errors": dict(self.errors),
            "open_s": time.monotonic() - started,
        }

    async def _opener(self, todo: Iterator[bytes]) -> None:
        loop = asyncio.get_running_loop()
        for request in todo:
            conn = Conn(request, stream=self.stream, latencies=self.latencies)
            try:
                async with asyncio.timeout(OPEN_TIMEOUT_S):
                    await loop.create_connection(
                        functools.partial(_same, conn), "127.0.0.1", self.port
                    )
                    await conn.established
            except (OSError, TimeoutError) as exc:
                self.errors[str(exc) or type(exc).__name__] += 1
                if conn.transport is not None:
                    conn.transport.abort()
                continue
            self.conns.append(conn)

    def status(self) -> dict[str, object]:
        return {
            "open": sum(not c.closed for c in self.conns),
            "closed": sum(c.closed for c in self.conns),
            "later_events": sum(len(c.seqs) for c in self.conns),
        }

    async def collect(self, last_seq: int, timeout_s: float) -> dict[str, object]:
        """Wait until every open stream has event `last_seq`; check each got 1..last_seq
        once and in order; latency percentiles over every delivery."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(c.closed or (c.seqs and c.seqs[-1] >= last_seq) for c in self.conns):
                break
            await asyncio.sleep(0.05)
        expected = list(range(1, last_seq + 1))
        wanted = set(expected)
        got = [c.seqs for c in self.conns]
        ordered = sorted(latency for _, latency in self.latencies)
        worst: dict[int, float] = {}
        for seq, latency in self.latencies:
            worst[seq] = max(latency, worst.get(seq, 0.0))
        summary = {
            "subscribers": len(got),
            "deliveries": sum(len(s) for s in got),
            "complete_in_order": sum(s == expected for s in got),
            "missing": sum(len(wanted - set(s)) for s in got),
            "duplicates": sum(len(s) - len(set(s)) for s in got),
            "out_of_order": sum(s != sorted(s) for s in got),
            "unexpected": sum(len(set(s) - wanted) for s in got),
            "closed": sum(c.closed for c in self.conns),
            "worst_events_ms": {
                str(seq): round(1000 * latency, 1)
                for seq, latency in sorted(worst.items(), key=lambda kv: -kv[1])[:5]
            },
            "latency_ms": {
                q: 1000 * percentile(ordered, v)
                for q, v in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
            },
        }
        for c in self.conns:
            c.seqs.clear()
        self.latencies.clear()
        return summary

    def close(self) -> int:
        for c in self.conns:
            if c.transport is not None:
                c.transport.abort()
        return len(self.conns)


def _same(conn: Conn) -> Conn:
    return conn


def _reply(answer: dict[str, object]) -> None:
    sys.stdout.write(orjson.dumps(answer).decode() + "\n")
    sys.stdout.flush()


async def serve_commands(client: Client) -> None:
    _reply(await client.open_all())
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        command = orjson.loads(line) if line.strip() else {"cmd": "exit"}
        if command["cmd"] == "status":
            _reply(client.status())
        elif command["cmd"] == "collect":
            _reply(await client.collect(int(command["last_seq"]), float(command["timeout_s"])))
        else:
            _reply({"closed": client.close()})
            await asyncio.sleep(0.2)  # let the resets go out
            return


def requests_of(args: argparse.Namespace) -> list[bytes]:
    host = f"Host: 127.0.0.1:{args.port}\r\n"
    if args.mode == "healthz":
        return [f"GET /healthz HTTP/1.1\r\n{host}\r\n".encode()] * args.count
    auth = f"Authorization: Bearer {args.key}\r\nAccept: text/event-stream\r\n"
    ids = [line.strip() for line in Path(args.ids).read_text().splitlines() if line.strip()]
    return [f"GET /agent/stream/{i} HTTP/1.1\r\n{host}{auth}\r\n".encode() for i in ids]


def raise_fd_limit() -> int:
    """Raise the soft limit of open files to the hard limit; the new soft limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--key", default="")
    p.add_argument("--parallel", type=int, default=200, help="connections being opened at once")
    modes = p.add_subparsers(dest="mode", required=True)
    modes.add_parser("healthz").add_argument("--count", type=int, required=True)
    modes.add_parser("stream").add_argument("--ids", type=Path, required=True)
    args = p.parse_args()
    raise_fd_limit()
    client = Client(
        args.port, requests_of(args), stream=args.mode == "stream", parallel=args.parallel
    )
    uvloop.run(serve_commands(client))


if __name__ == "__main__":
    main()
