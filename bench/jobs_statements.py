"""SQL statements per job, from PostgreSQL's statement log of a throwaway database.

    .venv/bin/python -m bench.jobs_statements               # 1 worker, 40 jobs each way
    .venv/bin/python -m bench.jobs_statements --workers 4

Starts what `bench.jobs_bench` starts (API with no embedded worker, K workers, the
fake model) on a database with `log_statement = all`, then submits jobs two ways:
one at a time with a pause between them (no backlog: each job wakes the workers
alone), and all at once while the workers are paused (a backlog drained in
batches). For each it prints every kind of statement the database executed per job,
transactions included, read from the server log (`--pg-log`; needs a server that
logs to a file this user can read, with `%d` in `log_line_prefix`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx

from bench import harness, jobs_db, pg, procs, servers
from bench.harness import Harness
from bench.procs import BenchError, Child

ROOT = Path(__file__).resolve().parent.parent
KINDS = [
    (re.compile(r"^(BEGIN|COMMIT|ROLLBACK)\b"), r"\1"),
    (re.compile(r"^WITH\s+(\w+)\s+AS\s*\(\s*(\w+)\s+(?:INTO\s+)?(\w+)"), r"WITH \1 AS (\2 \3 …) …"),
    (re.compile(r"^SELECT pg_notify"), "SELECT pg_notify"),
    (re.compile(r"^INSERT\s+INTO\s+(\w+)"), r"INSERT \1"),
    (re.compile(r"^UPDATE\s+(\w+)\s+SET\s+(\w+)"), r"UPDATE \1 SET \2 …"),
    (re.compile(r"^DELETE\s+FROM\s+(\w+)"), r"DELETE \1"),
    (re.compile(r"^SELECT\s.*?\sFROM\s+(\w+)", re.S), r"SELECT … FROM \1"),
]
"""Statement kinds: the verb and the table (a CTE by its name and first statement)."""
OWN = ("count(*) FILTER (WHERE status", "plan_cache_mode")
"""The benchmark's own statements (its queue watcher), left out."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--jobs", type=int, default=40, help="jobs per way")
    p.add_argument("--gap", type=float, default=0.1, help="seconds between paced jobs")
    p.add_argument(
        "--pg-log", type=Path, default=Path("/var/log/postgresql/postgresql-15-main.log")
    )
    p.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    p.add_argument("--app-dir", type=Path, default=ROOT)
    p.add_argument("--keep-logs", action="store_true")
    args = p.parse_args(argv)
    if not harness.loopback_postgres(args.postgres):
        p.error("--postgres must be postgresql://…@127.0.0.1:PORT (traffic stays on loopback)")
    return args


def kind_of(statement: str) -> str:
    text = re.sub(r"^(execute [^:]*|statement): ", "", statement.strip())
    for pattern, name in KINDS:
        found = pattern.match(text.strip())
        if found:
            return found.expand(name)
    return text.strip().split("\n", 1)[0][:60]


def parse_log(text: str, db_name: str) -> list[str]:
    """The statements logged for `db_name` (each with its continuation lines), but ours."""
    marker = f"@{db_name} LOG:  "
    entries: list[list[str]] = []
    collecting = False
    for line in text.splitlines():
        if marker in line:
            entries.append([line.split(marker, 1)[1]])
            collecting = True
        elif line.startswith("\t") and collecting:
            entries[-1].append(line)
        else:
            collecting = False
    joined = ["\n".join(e) for e in entries]
    return [s for s in joined if not any(own in s for own in OWN)]


def read_statements(log: Path, offset: int, db_name: str) -> list[str]:
    """The statements logged for `db_name` after byte `offset` of the server log."""
    with log.open("rb") as f:
        f.seek(offset)
        return parse_log(f.read().decode(errors="replace"), db_name)


def show(title: str, found: list[str], jobs: int, seconds: float) -> None:
    counts = collections.Counter(kind_of(s) for s in found)
    lines = [f"{title}: {len(found)} statements for {jobs} jobs in {seconds:.1f} s"]
    lines += [f"  {n / jobs:6.2f} per job  {kind}" for kind, n in counts.most_common()]
    print("\n".join(lines), flush=True)  # noqa: T201


def submit(port: int, count: int, gap_s: float) -> None:
    url = f"http://127.0.0.1:{port}/agent/submit"
    headers = {"Authorization": f"Bearer {servers.API_KEY}"}
    with httpx.Client(timeout=10.0) as client:
        for _ in range(count):
            client.post(url, json=servers.RUN_BODY, headers=headers).raise_for_status()
            if gap_s:
                time.sleep(gap_s)


def measure(
    h: Harness, args: argparse.Namespace, port: int, workers: list[Child], *, paced: bool
) -> None:
    """Submit `--jobs` jobs (paced, or all while the workers are paused), wait until
    they ended, and show what the database executed meanwhile."""
    how = f"one job every {args.gap:g} s" if paced else "a backlog drained"
    title = f"{len(workers)} worker(s) × {args.concurrency}, {how}"
    offset = args.pg_log.stat().st_size
    since = datetime.now(UTC)
    if not paced:
        for w in workers:
            procs.pause(w)
    try:
        submit(port, args.jobs, args.gap if paced else 0.0)
    finally:
        for w in workers:
            procs.resume(w)
    jobs_db.watch_queue(
        args.postgres,
        h.db_name,
        user=servers.API_USER,
        since=since,
        done=lambda s: s.pending + s.running == 0,
        timeout_s=120,
    )
    time.sleep(0.5)  # the log is written asynchronously
    seconds = (datetime.now(UTC) - since).total_seconds()
    show(title, read_statements(args.pg_log, offset, h.db_name), args.jobs, seconds)


async def _log_all(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"ALTER DATABASE \"{name}\" SET log_statement = 'all'")
    finally:
        await conn.close()


def run(args: argparse.Namespace, h: Harness) -> None:
    if not args.pg_log.is_file():
        raise BenchError(f"no PostgreSQL log at {args.pg_log} (--pg-log)")
    h.open()
    asyncio.run(_log_all(pg.admin_dsn(args.postgres), h.db_name))
    port = procs.free_port()
    api_cmd = servers.agentsvc_command(port, servers.ServeOptions())
    h.serve("api", api_cmd, h.agentsvc_env(log_level="warning", embedded_workers=0), port)
    env = h.agentsvc_env(log_level="warning", worker_concurrency=args.concurrency)
    workers = [h.start(f"worker{i}", servers.worker_command(), env) for i in range(args.workers)]
    deadline = time.monotonic() + 60
    while jobs_db.listeners(args.postgres, h.db_name) < 1 + args.workers:
        if time.monotonic() > deadline:
            raise BenchError("the workers did not start")
        time.sleep(0.2)
    submit(port, 5, 0.05)  # warm-up: connections opened, statements prepared
    time.sleep(2)
    measure(h, args, port, workers, paced=True)
    measure(h, args, port, workers, paced=False)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    harness.exit_on_sigterm()
    h = Harness(
        postgres=args.postgres, app_dir=args.app_dir, name="stmts", keep_logs=args.keep_logs
    )
    try:
        run(args, h)
    except BenchError as exc:
        print(f"probe failed: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    finally:
        h.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
