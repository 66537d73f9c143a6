"""How the benchmark starts each server: command line and environment.

With one process agentsvc runs as `agentsvc serve` and the baseline as
`python -m bench.bare_app`, both one `uvicorn.run(app, ...)`. With several, both run
under `uvicorn --factory --workers N` with the same flags; `agentsvc_app` is the
factory that builds, in each worker, what `agentsvc serve` builds.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

API_USER = "bench"
API_KEY = "bench-key"
MODEL = "openai/bench-model"
RUN_BODY: dict[str, object] = {"agent": "assistant", "input": "Say hello in one short sentence."}
"""What every benchmark run asks: the built-in assistant, which the fake model answers at once."""
SYNC_TIMEOUT_S = 30
"""A run still going after this long is answered 202 instead of 200."""


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    """Served the same way for agentsvc and the baseline."""

    processes: int = 1
    log_level: str = "warning"


def agentsvc_app() -> FastAPI:
    """`uvicorn --factory` entry point: agentsvc configured from the environment."""
    from app.main import create_app
    from app.settings import Settings

    return create_app(Settings())


def llm_command(port: int) -> list[str]:
    return [sys.executable, "-m", "bench.llm_server", "--port", str(port)]


def agentsvc_command(port: int, options: ServeOptions) -> list[str]:
    if options.processes == 1:
        agentsvc = Path(sys.executable).with_name("agentsvc")
        return [str(agentsvc), "serve", "--host", "127.0.0.1", "--port", str(port)]
    return _uvicorn_workers("bench.servers:agentsvc_app", port, options)


def worker_command() -> list[str]:
    """`agentsvc worker`: a queue worker of its own (its concurrency from the environment)."""
    return [str(Path(sys.executable).with_name("agentsvc")), "worker"]


def bare_command(port: int, options: ServeOptions) -> list[str]:
    if options.processes == 1:
        return [
            sys.executable,
            "-m",
            "bench.bare_app",
            "--port",
            str(port),
            "--log-level",
            options.log_level,
        ]
    return _uvicorn_workers("bench.bare_app:create_app", port, options)


def _uvicorn_workers(factory: str, port: int, options: ServeOptions) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        factory,
        "--factory",
        "--workers",
        str(options.processes),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        options.log_level,
        "--proxy-headers",
    ]


def base_env(inherited: Mapping[str, str], *, app_dir: Path) -> dict[str, str]:
    """The inherited environment without any AGENTSVC_ setting, importing from `app_dir`."""
    env = {k: v for k, v in inherited.items() if not k.startswith("AGENTSVC_")}
    env["PYTHONPATH"] = str(app_dir)
    return env


def agentsvc_env(
    base: Mapping[str, str],
    *,
    database_url: str,
    llm_port: int,
    sandbox: Path,
    log_level: str,
    pool_size: int | None = None,
    embedded_workers: int | None = None,
    worker_concurrency: int | None = None,
) -> dict[str, str]:
    """agentsvc on the benchmark database, with the fake model as its default model.
    None leaves a setting at agentsvc's default."""
    env = {
        **base,
        "AGENTSVC_DATABASE_URL": database_url,
        "AGENTSVC_DEFAULT_MODEL": MODEL,
        "AGENTSVC_OPENAI_BASE_URL": f"http://127.0.0.1:{llm_port}/v1",
        "AGENTSVC_API_KEYS": f"{API_USER}:{API_KEY}",
        "AGENTSVC_SECRET_KEY": "bench-secret-not-for-production",
        "AGENTSVC_SANDBOX_DIR": str(sandbox),
        "AGENTSVC_LOG_LEVEL": log_level,
        "AGENTSVC_SYNC_TIMEOUT_S": str(SYNC_TIMEOUT_S),
    }
    optional = {
        "AGENTSVC_DB_POOL_SIZE": pool_size,
        "AGENTSVC_EMBEDDED_WORKERS": embedded_workers,
        "AGENTSVC_WORKER_CONCURRENCY": worker_concurrency,
    }
    env.update({name: str(value) for name, value in optional.items() if value is not None})
    return env
