"""What every benchmark run owns, and removes at the end: a temporary directory, a
PostgreSQL database of its own (migrated with `agentsvc migrate`), the fake model of
`bench.llm_server`, and every child process it started.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import httpx

from bench import pg, procs, report, servers
from bench.procs import Child


class Harness:
    """One benchmark run's resources; `close()` stops the children and drops the database."""

    def __init__(self, *, postgres: str, app_dir: Path, name: str, keep_logs: bool) -> None:
        self.postgres = postgres
        self.app_dir = app_dir.resolve()
        self.keep_logs = keep_logs
        self.tmp = Path(tempfile.mkdtemp(prefix=f"agentsvc-{name}-"))
        self.db_name = f"agentsvc_{name}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.db_url = pg.app_url(postgres, self.db_name)
        self.env = servers.base_env(os.environ, app_dir=self.app_dir)
        self.children: list[Child] = []
        self.llm: Child | None = None
        self.llm_port = 0
        self._db_created = False

    def open(self) -> None:
        """Create and migrate the database; start the fake model and wait until it answers."""
        pg.create_database(self.postgres, self.db_name)
        self._db_created = True
        pg.migrate({**self.env, "AGENTSVC_DATABASE_URL": self.db_url}, cwd=self.app_dir)
        self.llm_port = procs.free_port()
        self.llm = self.start("llm", servers.llm_command(self.llm_port), self.env)
        procs.wait_ready(self.llm, f"http://127.0.0.1:{self.llm_port}/stats")

    def agentsvc_env(
        self,
        *,
        log_level: str,
        pool_size: int | None = None,
        embedded_workers: int | None = None,
        worker_concurrency: int | None = None,
    ) -> dict[str, str]:
        """agentsvc's environment on this run's database and fake model."""
        return servers.agentsvc_env(
            self.env,
            database_url=self.db_url,
            llm_port=self.llm_port,
            sandbox=self.tmp / "sandbox",
            log_level=log_level,
            pool_size=pool_size,
            embedded_workers=embedded_workers,
            worker_concurrency=worker_concurrency,
        )

    def start(self, name: str, cmd: Sequence[str], env: dict[str, str]) -> Child:
        child = procs.start(name, cmd, env=env, cwd=self.app_dir, log_dir=self.tmp)
        self.children.append(child)
        return child

    def serve(self, name: str, cmd: Sequence[str], env: dict[str, str], port: int) -> Child:
        """Start an HTTP server on `port` and wait until its /healthz answers."""
        child = self.start(name, cmd, env)
        procs.wait_ready(child, f"http://127.0.0.1:{port}/healthz")
        return child

    def llm_completions(self) -> int:
        """Completions the fake model has answered so far."""
        answer = httpx.get(f"http://127.0.0.1:{self.llm_port}/stats", timeout=5.0).json()
        return int(answer["chat_completions"])

    def close(self) -> None:
        """Stop every child (newest first), drop the database, remove the directory."""
        for child in reversed(self.children):
            procs.stop(child)
        if self._db_created:
            pg.drop_database(self.postgres, self.db_name)
            self._db_created = False
        if self.keep_logs:
            print(f"logs kept in {self.tmp}")  # noqa: T201
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def exit_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so `finally: harness.close()` runs."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def loopback_postgres(url: str) -> bool:
    """Whether `url` is a postgresql:// URL on 127.0.0.1 (benchmarks stay on loopback)."""
    return url.startswith("postgresql://") and "127.0.0.1" in url


def describe_machine(postgres: str) -> report.Machine:
    version = pg.server_version(postgres)
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10, check=False)
    return report.Machine.describe(
        postgres=version, wrk=(wrk.stdout + wrk.stderr).split("[", 1)[0].strip() or "wrk"
    )


def commit_of(app_dir: Path) -> str:
    """The short commit of the checkout under test, marked when its app/ has uncommitted
    changes (git is only read)."""

    def git(*args: str) -> str:
        cmd = ["git", "-C", str(app_dir), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return f"{commit} + uncommitted app/ changes" if git("status", "--porcelain", "app") else commit


def reproduce(module: str, argv: Sequence[str]) -> str:
    """The command line that ran this benchmark."""
    return f".venv/bin/python -m {module} " + " ".join(shlex.quote(a) for a in argv)
