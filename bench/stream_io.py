"""What the SSE benchmark does outside the server: submit runs, drive the client process,
read a process's memory, publish into a run's live bus, time a raw Redis round trip."""

from __future__ import annotations

import asyncio
import collections
import re
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import httpx
import orjson
import redis
import redis.asyncio as aioredis

from bench import servers
from bench.paced import percentile
from bench.procs import BenchError, Child

SUBMIT_CONCURRENCY = 32


def rss_kib(pid: int) -> int:
    """VmRSS of `pid` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


_LOGGED = re.compile(r"^(?:\S+ \S+ )?(WARNING|ERROR|CRITICAL):?\s+(.*)$")
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def log_problems(log: Path, *, top: int = 6) -> dict[str, int]:
    """The warnings and errors a server logged, counted by message with ids blanked
    (agentsvc's `time level logger message` lines and uvicorn's `LEVEL:  message`)."""
    found: collections.Counter[str] = collections.Counter()
    for line in log.read_text(errors="replace").splitlines():
        match = _LOGGED.match(line)
        if match:
            found[f"{match.group(1)} {_ID.sub('<id>', match.group(2))}"] += 1
    return dict(found.most_common(top))


def flush_redis(url: str) -> None:
    """Empty the benchmark's Redis database (its own index, never another)."""
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


async def _submit(port: int, count: int) -> list[str]:
    ids: list[str] = []
    todo = iter(range(count))
    headers = {"Authorization": f"Bearer {servers.API_KEY}"}
    limits = httpx.Limits(max_connections=SUBMIT_CONCURRENCY)
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits) as client:

        async def submitter() -> None:
            for _ in todo:
                answer = await _post_retrying(client, "/agent/submit", servers.RUN_BODY)
                if answer.status_code != 202:
                    raise BenchError(f"submit answered {answer.status_code}: {answer.text}")
                ids.append(str(answer.json()["job_id"]))

        await asyncio.gather(*(submitter() for _ in range(SUBMIT_CONCURRENCY)))
    return ids


async def _post_retrying(
    client: httpx.AsyncClient, path: str, body: dict[str, object]
) -> httpx.Response:
    """POST, again on a transport error (a lost run stays pending, unused)."""
    for attempt in range(3):
        try:
            return await client.post(path, json=body, timeout=30)
        except httpx.TransportError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def submit_runs(port: int, count: int) -> list[str]:
    """Submit `count` runs of the built-in assistant; their job ids."""
    return asyncio.run(_submit(port, count))


class ClientProcess:
    """`bench.stream_client` in a child process: JSON commands in, JSON answers out."""

    def __init__(self, child: Child) -> None:
        self.child = child

    @classmethod
    def start(cls, args: Sequence[str], *, port: int, cwd: Path, log: Path) -> ClientProcess:
        cmd = [sys.executable, "-m", "bench.stream_client", "--port", str(port)]
        cmd += ["--key", servers.API_KEY, *args]
        with log.open("wb") as err:
            popen = subprocess.Popen(
                cmd,
                cwd=cwd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        return cls(Child("client", popen, log))

    def answer(self, timeout_s: float) -> dict[str, object]:
        """The client's next JSON line; fails when it exits or stays silent too long."""
        out = self.child.popen.stdout
        assert out is not None
        ready, _, _ = select.select([out], [], [], timeout_s)
        line = out.readline() if ready else b""
        if not line:
            raise BenchError(f"client: no answer within {timeout_s:g} s:\n{self.child.tail()}")
        value = orjson.loads(line)
        assert isinstance(value, dict)
        return value

    def ask(self, command: dict[str, object], timeout_s: float) -> dict[str, object]:
        stdin = self.child.popen.stdin
        assert stdin is not None
        stdin.write(orjson.dumps(command) + b"\n")
        stdin.flush()
        return self.answer(timeout_s)

    def exit(self) -> None:
        """Close every connection (with resets) and wait for the process to end."""
        if self.child.popen.poll() is None:
            self.ask({"cmd": "exit"}, 60)
            self.child.popen.wait(timeout=30)


def publish_deltas(
    url: str, run_id: str, *, count: int, rate: float, env: dict[str, str], cwd: Path
) -> float:
    """Publish `llm.delta` events 1..count into the run's live bus through the app's own
    `RedisBus` (`bench.stream_publish`, importing the tree under test); seconds it took."""
    cmd = [sys.executable, "-m", "bench.stream_publish", "--redis", url, "--run-id", run_id]
    cmd += ["--events", str(count), "--rate", str(rate)]
    timeout_s = 60 + 2 * count / rate
    done = subprocess.run(
        cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"publishing failed:\n{done.stdout}\n{done.stderr}")
    answer = orjson.loads(done.stdout.strip().splitlines()[-1])
    return float(answer["publish_s"])


async def _round_trip(url: str, count: int, rate: float) -> tuple[list[float], list[int]]:
    channel = f"bench:rtt:{uuid.uuid4().hex}"
    client = aioredis.Redis.from_url(url)
    pubsub = client.pubsub()
    latencies: list[float] = []
    seqs: list[int] = []
    try:
        await pubsub.subscribe(channel)
        while await pubsub.get_message(timeout=1.0) is None:  # the confirmation
            pass

        async def receive() -> None:
            while len(seqs) < count:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "message":
                    now = time.time()
                    body = orjson.loads(message["data"])
                    latencies.append(now - body["sent_at"])
                    seqs.append(int(body["seq"]))

        receiver = asyncio.create_task(receive())
        start = time.monotonic()
        for seq in range(1, count + 1):
            delay = start + (seq - 1) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await client.publish(channel, orjson.dumps({"seq": seq, "sent_at": time.time()}))
        await asyncio.wait_for(receiver, timeout=30)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()
    return latencies, seqs


def redis_round_trip(url: str, *, count: int, rate: float) -> tuple[dict[str, float], list[int]]:
    """Publish `count` messages on a fresh channel at `rate`/s and receive them in the same
    process: latency percentiles in ms, and the sequences in arrival order."""
    latencies, seqs = asyncio.run(_round_trip(url, count, rate))
    ordered = sorted(latencies)
    qs = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
    return {q: 1000 * percentile(ordered, v) for q, v in qs}, seqs
