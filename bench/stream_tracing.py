"""`agentsvc serve` under tracemalloc, for `bench.stream_bench --trace-memory`.

    python -m bench.stream_tracing --snapshots DIR serve --host 127.0.0.1 --port 8000

Starts tracing before the app is imported; each SIGUSR1 dumps a snapshot to
DIR/snapshot-<n>.pickle (written aside, then renamed). `growth` compares two snapshots:
the allocation sites that grew most, and the growth by package. tracemalloc sees what
Python allocates (objects, buffers), not libuv's or the allocator's own overhead, and
makes the process bigger and slower: figures from a traced run are for attribution only.
"""

from __future__ import annotations

import argparse
import itertools
import re
import signal
import tracemalloc
from collections import Counter
from pathlib import Path

_PACKAGE = re.compile(r"(?:site-packages/|python3\.\d+/(?!site-packages))([A-Za-z_]\w*)")


def package_of(filename: str) -> str:
    """`asyncio`, `uvicorn`, `app`, … for the file an allocation was made in."""
    if "/app/" in filename and "site-packages" not in filename:
        return "app"
    found = _PACKAGE.search(filename)
    return found.group(1) if found else filename.rsplit("/", 1)[-1]


def owner_of(traceback: tracemalloc.Traceback) -> str:
    """The package that asked for an allocation: the newest frame outside the standard
    library (an `asyncio.Event` made by anyio counts as anyio's), with enough frames."""
    for frame in reversed(traceback):  # the newest frame is last
        if "site-packages/" in frame.filename or "/app/" in frame.filename:
            return package_of(frame.filename)
    return package_of(traceback[-1].filename)


def growth(before: Path, after: Path, *, top: int = 12) -> tuple[int, list[str]]:
    """Total traced growth in bytes and the lines that describe it."""
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    old = tracemalloc.Snapshot.load(str(before)).filter_traces(ignore)
    new = tracemalloc.Snapshot.load(str(after)).filter_traces(ignore)
    stats = new.compare_to(old, "lineno")
    total = sum(s.size_diff for s in stats)
    by_package: Counter[str] = Counter()
    for s in new.compare_to(old, "traceback"):
        by_package[owner_of(s.traceback)] += s.size_diff
    lines = [
        "growth by the package that allocated: "
        + ", ".join(f"{p} {b / 1e6:.1f} MB" for p, b in by_package.most_common(8))
    ]
    for s in sorted(stats, key=lambda s: s.size_diff, reverse=True)[:top]:
        frame = s.traceback[-1]
        where = re.split(r"site-packages/|/lib/python3\.\d+/", frame.filename)[-1]
        lines.append(
            f"{s.size_diff / 1e6:7.2f} MB {s.count_diff:+8d} blocks  {where}:{frame.lineno}"
        )
    return total, lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--snapshots", type=Path, required=True)
    p.add_argument("--frames", type=int, default=1, help="frames kept per allocation")
    args, rest = p.parse_known_args()
    tracemalloc.start(args.frames)
    numbers = itertools.count()

    def dump(*_: object) -> None:
        path = args.snapshots / f"snapshot-{next(numbers)}.pickle"
        aside = path.with_suffix(".partial")
        tracemalloc.take_snapshot().dump(str(aside))
        aside.rename(path)

    signal.signal(signal.SIGUSR1, dump)
    from app.cli import cli

    cli(rest, prog_name="agentsvc")


if __name__ == "__main__":
    main()
