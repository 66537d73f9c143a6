"""Throughput of the output filter (`app.guards.redact`) against a one-regex baseline.

    .venv/bin/python -m bench.redact_bench                 # ~1 MB corpus, best of 3
    .venv/bin/python -m bench.redact_bench --size-mb 4 --repeat 5

The corpus is LLM-like prose (sentences, arithmetic, timestamps, versions, amounts, code
and list lines) with a PII value or secret every ~2 KB, built from a fixed seed. The
baseline is one pass of `re.compile("@").search` over the same text, looping to each
`@`: the least work any filter that reads every character must do. Each row gives the
best of `--repeat` runs in CPU time, as MB/s of input (UTF-8 bytes) and as a multiple of
the baseline's time measured in the same run. Stream rows feed the corpus in
fixed-size chunks (LLM deltas are 3-20 characters) and report how many characters the
stream held back after a chunk: the lag a reader sees. Every streamed output is checked
equal to `redact()` of the whole corpus.
"""

from __future__ import annotations

import argparse
import functools
import platform
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.guards.redact import Entity, Redactor

SEED = 20261127
WORDS = (
    "the a model agent answer request tool result run step budget stream token cost user "
    "server queue retry value error limit time call output input policy check worker "
    "returns uses needs shows keeps sends reads writes waits fails passes holds is was "
    "quickly safely first then also only never always because while when after before"
).split()
NOISE = (
    "17*23 = 391, so the answer is 391.",
    "It is 2026-11-27T21:13:06+00:00 in UTC.",
    "Upgrade from 3.11.7 to 3.12.1 before May 2026.",
    "The total is $1,234.56 (about 1234.56 EUR), 12% more than in 2025.",
    "```python\nfor i in range(10):\n    print(i * 2)\n```",
    "- step 1: read the file\n- step 2: count 42 lines\n",
    "See https://example.org/docs/v2/guide#setup for details.",
)
VALUES = (
    "jane.doe@example.com",
    "(555) 123-4567",
    "+44 20 7946 0958",
    "123-45-6789",
    "4111 1111 1111 1111",
    "DE89 3704 0044 0532 0130 00",
    "sk-proj-" + "a1B2c3D4e5" * 4,
    "AKIAIOSFODNN7EXAMPLE",
    "password=hunter2",
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl",
    "-----BEGIN PRIVATE KEY-----\n"
    + "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n" * 40
    + "-----END PRIVATE KEY-----",
)


def build_corpus(size: int, seed: int = SEED) -> str:
    """About `size` characters of prose with a sensitive value every ~2,000 characters."""
    rnd = random.Random(seed)
    parts: list[str] = []
    length = since_value = 0
    while length < size:
        if since_value > 2000:
            piece = f"Contact: {rnd.choice(VALUES)}. "
            since_value = 0
        elif rnd.random() < 0.15:
            piece = rnd.choice(NOISE) + " "
        else:
            words = rnd.choices(WORDS, k=rnd.randint(6, 18))
            piece = " ".join(words).capitalize() + rnd.choice((". ", ". ", "? ", ".\n\n"))
        parts.append(piece)
        length += len(piece)
        since_value += len(piece)
    return "".join(parts)


def baseline(text: str) -> int:
    """One pass of a trivial compiled regex, looping to each match: the floor."""
    search = re.compile("@").search
    count = pos = 0
    while (m := search(text, pos)) is not None:
        count += 1
        pos = m.end()
    return count


@dataclass(frozen=True, kw_only=True)
class Row:
    """One measured path."""

    name: str
    seconds: float
    held: list[int] | None = None
    """Characters held back after each chunk (stream rows only)."""


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    """The least CPU time of `repeat` calls: this process's, so other work on the machine
    (the cores are shared) disturbs it less than wall time."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def stream_once(redactor: Redactor, text: str, size: int) -> tuple[str, list[int]]:
    """Feed `text` in chunks of `size` characters; the output and the hold after each."""
    stream = redactor.stream()
    out: list[str] = []
    held: list[int] = []
    for i in range(0, len(text), size):
        out.append(stream.feed(text[i : i + size]))
        held.append(stream.held)
    out.append(stream.flush())
    return "".join(out), held


def measure(text: str, repeat: int, chunk_sizes: list[int]) -> list[Row]:
    """Time the baseline, `redact()` and each chunk size."""
    full = Redactor()
    email = Redactor(entities=frozenset({Entity.EMAIL}))
    expected = full.redact(text)
    rows = [
        Row(name="baseline: `re` search for `@`", seconds=best_of(repeat, lambda: baseline(text))),
        Row(name="redact(), all entities", seconds=best_of(repeat, lambda: full.redact(text))),
        Row(name="redact(), EMAIL only", seconds=best_of(repeat, lambda: email.redact(text))),
    ]
    for size in chunk_sizes:
        output, held = stream_once(full, text, size)
        if output != expected:
            raise SystemExit(f"streamed output with {size}-character chunks differs from redact()")
        seconds = best_of(repeat, functools.partial(stream_once, full, text, size))
        rows.append(
            Row(
                name=f"stream, {size}-character chunks",
                seconds=seconds,
                held=sorted(held),
            )
        )
    return rows


def table(rows: list[Row], megabytes: float) -> str:
    """The Markdown table of `rows`; each time is given as a multiple of the first row's."""
    base = megabytes / rows[0].seconds
    lines = [
        "| path | MB/s | time vs baseline | µs per chunk | held after a chunk: p50 / p99 / max |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        rate = megabytes / row.seconds
        if row.held is None:
            per_chunk = held = "-"
        else:
            n = len(row.held)
            per_chunk = f"{row.seconds / n * 1e6:.1f}"
            held = f"{row.held[n // 2]} / {row.held[n * 99 // 100]} / {row.held[-1]}"
        lines.append(f"| {row.name} | {rate:,.2f} | {base / rate:,.0f}× | {per_chunk} | {held} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Build the corpus, measure, print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--size-mb", type=float, default=1.0, help="corpus size in MB (characters)")
    p.add_argument("--repeat", type=int, default=3, help="runs per row; the best is kept")
    p.add_argument("--chunks", default="4,16,64", help="comma list of stream chunk sizes")
    args = p.parse_args(argv)
    text = build_corpus(int(args.size_mb * 1_000_000))
    megabytes = len(text.encode()) / 1e6
    rows = measure(text, args.repeat, [int(c) for c in args.chunks.split(",") if c.strip()])
    values = sum(text.count(v) for v in VALUES)
    print(  # noqa: T201
        f"Corpus: {megabytes:.2f} MB, {values} sensitive values, seed {SEED}; best of "
        f"{args.repeat}; Python {platform.python_version()} on {platform.machine()}.\n"
    )
    print(table(rows, megabytes))  # noqa: T201


if __name__ == "__main__":
    main()
