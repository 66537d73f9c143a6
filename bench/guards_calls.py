"""Timing LLM calls through a stack of model clients: interleaved batches, per-call wall and
CPU time; what each call sends to Redis (counted in a pass of its own, so that counting
never slows a timed call) and to the database (an engine event, which costs nothing until
a statement runs)."""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import pstats
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from redis.asyncio import Redis
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from app.llm.types import LLMRequest, LLMResponse, ModelClient


@dataclass
class Samples:
    """Per-call wall and CPU (this thread's) times, in nanoseconds."""

    wall_ns: list[int] = field(default_factory=list)
    cpu_ns: list[int] = field(default_factory=list)

    def pct_us(self, q: float) -> float:
        """The `q` quantile (0–1, nearest rank) of the wall times, in µs."""
        ordered = sorted(self.wall_ns)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000

    @property
    def cpu_p50_us(self) -> float:
        """The median CPU time per call, in µs (a median: a garbage collection or another
        task's callback landing in one call does not move it)."""
        ordered = sorted(self.cpu_ns)
        return ordered[len(ordered) // 2] / 1000

    @property
    def count(self) -> int:
        return len(self.wall_ns)


@dataclass
class Series:
    """One client called with its own requests; `requests[i]` is call i (warm-up first)."""

    name: str
    client: ModelClient
    requests: Sequence[LLMRequest]
    budgeted: bool = False
    """The client reserves and settles budget: its answers' tokens are counted as used."""
    hits: bool = False
    """Every measured call must be a prompt-cache hit (else none may be)."""
    samples: Samples = field(default_factory=Samples)
    responses: list[LLMResponse] = field(default_factory=list)
    """The measured calls' answers (warm-up excluded)."""
    settled_tokens: int = 0
    """Tokens of every answer (warm-up included) that went through the budget."""


class DbStatements:
    """Statements the engine sends while `phase` is set, by phase."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.phase = ""
        self.counts: Counter[str] = Counter()
        self.texts: Counter[str] = Counter()
        event.listen(engine.sync_engine, "before_cursor_execute", self._seen)

    def _seen(self, *args: object) -> None:
        if self.phase:
            self.counts[self.phase] += 1
            self.texts[" ".join(str(args[2]).split())[:80]] += 1


async def call_once(series: Series, index: int, *, keep: bool = True) -> None:
    """Call `series.requests[index]`, timed; `keep`: record the times and the answer."""
    request = series.requests[index]
    cpu0 = time.thread_time_ns()
    wall0 = time.perf_counter_ns()
    response = await series.client.complete(request)
    wall1 = time.perf_counter_ns()
    cpu1 = time.thread_time_ns()
    if series.budgeted and not response.cache_hit:
        series.settled_tokens += response.usage.input_tokens + response.usage.output_tokens
    if keep:
        series.samples.wall_ns.append(wall1 - wall0)
        series.samples.cpu_ns.append(cpu1 - cpu0)
        series.responses.append(response)


async def measure(
    series: Sequence[Series], *, warmup: int, calls: int, batch: int, db: DbStatements
) -> None:
    """`warmup` calls of each series, then `calls` each in batches of `batch`, the series
    taking turns (the order rotating every round) so that drift hits them all alike."""
    for s in series:
        for i in range(warmup):
            await call_once(s, i, keep=False)
    gc.collect()
    rounds = (calls + batch - 1) // batch
    for r in range(rounds):
        order = [*series[r % len(series) :], *series[: r % len(series)]]
        first = warmup + r * batch
        for s in order:
            db.phase = s.name
            for i in range(first, min(first + batch, warmup + calls)):
                await call_once(s, i)
        db.phase = ""


@dataclass(frozen=True, kw_only=True)
class RedisTraffic:
    """What one kind of call sends to Redis, counted over `calls` calls."""

    calls: int
    commands: dict[str, int]
    """Commands the client sent, by name (alone or in a pipeline)."""
    trips: int
    """Round trips: a command sent alone, or a pipeline."""
    server_us: dict[str, float]
    """Server time per command (`INFO commandstats`, whole server: other clients too)."""

    @property
    def round_trips(self) -> float:
        return self.trips / max(self.calls, 1)

    def describe(self) -> str:
        parts = []
        for name, n in sorted(self.commands.items()):
            server = self.server_us.get(name)
            timing = "" if server is None else f", {server:.1f} µs each in Redis"
            parts.append(f"{n / self.calls:g} {name}{timing}")
        return "; ".join(parts) or "none"


def _commandstats(info: dict[str, object]) -> dict[str, tuple[int, int]]:
    stats = {}
    for key, value in info.items():
        if key.startswith("cmdstat_") and isinstance(value, dict):
            stats[key[len("cmdstat_") :].upper()] = (int(value["calls"]), int(value["usec"]))
    return stats


async def redis_traffic(
    redis: Redis, calls: int, call: Callable[[int], Awaitable[object]]
) -> RedisTraffic:
    """Run `call(i)` `calls` times with the client's commands and round trips counted
    (instance attributes over `execute_command` and `pipeline`, removed afterwards)."""
    counted: Counter[str] = Counter()
    trips = 0
    send = cast(Callable[..., Awaitable[object]], redis.execute_command)  # untyped in redis-py
    make_pipeline = redis.pipeline

    async def counting(*args: object, **options: object) -> object:
        nonlocal trips
        counted[str(args[0]).upper()] += 1
        trips += 1
        return await send(*args, **options)

    def counting_pipeline(*args: Any, **options: Any) -> Any:
        pipe = make_pipeline(*args, **options)
        stack, execute = pipe.execute_command, pipe.execute

        def stacking(*command: Any, **kw: Any) -> Any:
            counted[str(command[0]).upper()] += 1
            return stack(*command, **kw)

        async def executing(*a: Any, **kw: Any) -> Any:
            nonlocal trips
            trips += 1
            return await execute(*a, **kw)

        pipe.execute_command = stacking  # type: ignore[method-assign]
        pipe.execute = executing  # type: ignore[method-assign]
        return pipe

    before = _commandstats(await redis.info("commandstats"))
    redis.execute_command = counting  # type: ignore[method-assign]
    redis.pipeline = counting_pipeline  # type: ignore[method-assign]
    try:
        for i in range(calls):
            await call(i)
        await asyncio.sleep(0.01)  # the last call's queued writes
    finally:
        del redis.execute_command
        del redis.pipeline
    after = _commandstats(await redis.info("commandstats"))
    server = {}
    for name in counted:
        n = after.get(name, (0, 0))[0] - before.get(name, (0, 0))[0]
        usec = after.get(name, (0, 0))[1] - before.get(name, (0, 0))[1]
        if n > 0:
            server[name] = usec / n
    return RedisTraffic(calls=calls, commands=dict(counted), trips=trips, server_us=server)


async def profile(client: ModelClient, requests: Sequence[LLMRequest], path: Path) -> str:
    """cProfile one call of `client` per request into `path`; the top functions by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    for request in requests:
        await client.complete(request)
    profiler.disable()
    profiler.dump_stats(path)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
    return out.getvalue()
