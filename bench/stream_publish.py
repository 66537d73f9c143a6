"""Publish `llm.delta` events into one run's live bus, as agentsvc's runner does.

    python -m bench.stream_publish --redis URL --run-id ID --events 200 --rate 50

Events 1..N of the run (its `run.started` is 0, in the database), each with
`{"text": …, "sent_at": time.time()}` stamped just before the app's own
`RedisBus.publish`, one event per call on a fixed schedule. Prints `{"publish_s": …}`.
A process of its own so that it imports the `app` package of the tree under test
(PYTHONPATH), as the servers do.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import orjson
import redis.asyncio as aioredis

from app.bus.redis_events import RedisBus
from app.runner.events import EventType, RunEvent

TIMEOUT_S = 1.0


async def publish(url: str, run_id: str, count: int, rate: float) -> float:
    """Seconds from the first publish to the last answer."""
    client = aioredis.Redis.from_url(
        url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S
    )
    bus = RedisBus(client, url, timeout_s=TIMEOUT_S, retention_s=600)
    try:
        start = time.monotonic()
        for seq in range(1, count + 1):
            delay = start + (seq - 1) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            data: dict[str, object] = {"text": f"token{seq} ", "sent_at": time.time()}
            await bus.publish([RunEvent(run_id, seq, EventType.LLM_DELTA, data)])
        return time.monotonic() - start
    finally:
        await bus.close()
        await client.aclose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--redis", required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--rate", type=float, required=True)
    args = p.parse_args()
    took = asyncio.run(publish(args.redis, args.run_id, args.events, args.rate))
    sys.stdout.write(orjson.dumps({"publish_s": took}).decode() + "\n")


if __name__ == "__main__":
    main()
