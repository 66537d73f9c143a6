"""`agentsvc serve | worker | migrate | keys create|list|revoke | budgets set|clear |
policy show|set | experiments report`."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
import uvloop

from app.cli_policy import policy
from app.settings import Role, Settings

if TYPE_CHECKING:
    from app.store.db import Database

T = TypeVar("T")

cli = typer.Typer(no_args_is_help=True, add_completion=False, help="Run LLM agents in production.")
keys = typer.Typer(no_args_is_help=True, help="Manage API keys.")
cli.add_typer(keys, name="keys")
budgets = typer.Typer(no_args_is_help=True, help="Manage per-user token budgets.")
cli.add_typer(budgets, name="budgets")
experiments = typer.Typer(
    no_args_is_help=True, help="Compare agent versions, A/B variants and shadow versions."
)
cli.add_typer(experiments, name="experiments")
cli.add_typer(policy, name="policy")


def _settings() -> Settings:
    from app.observability.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return settings


def tune_gc() -> None:
    """Collect young objects less often: a server holding thousands of streams allocates
    per event and per reader, and the default threshold (700) made collections a fifth of
    fan-out time and its latency tail (BENCHMARKS.md)."""
    gc.set_threshold(50_000, 20, 20)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Overrides AGENTSVC_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="Overrides AGENTSVC_PORT")] = None,
    processes: Annotated[int | None, typer.Option(help="Overrides AGENTSVC_WEB_PROCESSES")] = None,
) -> None:
    """Start the API (migrating a SQLite database first)."""
    import uvicorn

    from app.observability.logs import log_config
    from app.observability.multiprocess import host_metrics

    settings = _settings()
    count = processes or settings.web_processes
    tune_gc()
    # Before the app is imported: prometheus_client picks its storage on import.
    with host_metrics(settings, processes=count) as settings:
        from app.main import create_app
        from app.store.migrate import upgrade

        if settings.is_sqlite:
            upgrade(settings.database_url)
        options: dict[str, object] = {
            "host": host or settings.host,
            "port": port or settings.port,
            "log_level": settings.log_level,
            "log_config": log_config(settings.log_level, settings.log_format),
            "proxy_headers": True,
        }
        if count > 1:
            # Several processes import the app by name; each reads the same environment.
            uvicorn.run("app.asgi:app_from_environment", factory=True, workers=count, **options)  # type: ignore[arg-type]
        else:
            uvicorn.run(create_app(settings), **options)  # type: ignore[arg-type]


@cli.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(help="Overrides AGENTSVC_WORKER_CONCURRENCY")
    ] = None,
) -> None:
    """Run queued runs until SIGTERM, then hand unfinished runs back to the queue."""
    from app.observability.multiprocess import host_metrics

    settings = _settings()
    tune_gc()
    with host_metrics(settings, processes=1) as settings:
        from app.observability.export import metrics_server

        if settings.is_sqlite:
            from app.store.migrate import upgrade

            upgrade(settings.database_url)
        with metrics_server(settings):
            # uvloop, as `serve` gets from uvicorn: 7–14 % less worker CPU per job.
            uvloop.run(_work(settings, concurrency or settings.worker_concurrency))


async def _work(settings: Settings, capacity: int) -> None:
    import signal

    from app.lifespan import open_services

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_services(settings, worker_capacity=capacity) as services:
        logging.getLogger("agentsvc.worker").info(
            "worker %s running up to %d runs", services.executor.owner, capacity
        )
        await stop.wait()
        # Leaving the block stops claiming, lets each run finish its step and releases it.


@cli.command()
def migrate() -> None:
    """Upgrade the database schema to the latest revision."""
    from app.store.migrate import upgrade

    settings = _settings()
    upgrade(settings.database_url)
    typer.echo("database is at the latest revision")


@keys.command("create")
def create_key(
    user: Annotated[str, typer.Option(help="The user the key belongs to")],
    role: Annotated[str, typer.Option(help="user, approver or admin")] = "user",
) -> None:
    """Create an API key and print it once (only its keyed hash is stored)."""
    from app.services.auth import Authenticator
    from app.settings import ROLES

    if role not in ROLES:
        raise typer.BadParameter(f"role must be one of {', '.join(ROLES)}", param_hint="--role")
    checked_role: Role = role

    async def create(settings: Settings, db: Database) -> str:
        auth = Authenticator(secret=settings.secret_key.get_secret_value(), db=db)
        return await auth.create_key(user_id=user, role=checked_role)

    typer.echo(with_db(create))


@keys.command("list")
def list_keys(
    user: Annotated[str | None, typer.Option(help="Only this user's keys")] = None,
) -> None:
    """List stored keys (id, user, role, created, revoked); never the keys themselves."""
    from app.store import keys as key_store

    async def read(_settings: Settings, db: Database) -> list[key_store.KeyRecord]:
        async with db.read() as conn:
            return await key_store.list_keys(conn, user_id=user)

    for key in with_db(read):
        revoked = key.revoked_at.isoformat() if key.revoked_at else "-"
        typer.echo(f"{key.id}  {key.user_id}  {key.role}  {key.created_at.isoformat()}  {revoked}")


@keys.command("revoke")
def revoke_key(
    key: Annotated[str, typer.Argument(help="The key itself, or its id from `keys list`")],
) -> None:
    """Revoke a stored key: every replica refuses it within 30 s (401)."""
    from app.services.auth import Authenticator

    async def revoke(settings: Settings, db: Database) -> str | None:
        auth = Authenticator(secret=settings.secret_key.get_secret_value(), db=db)
        record = await auth.revoke_key(key)
        return None if record is None else f"{record.id}  {record.user_id}  revoked"

    done = with_db(revoke)
    if done is None:
        typer.echo(
            "no stored key matches (keys from AGENTSVC_API_KEYS are revoked there)", err=True
        )
        raise typer.Exit(1)
    typer.echo(done)


@budgets.command("set")
def set_budget(
    user: Annotated[str, typer.Option(help="The user whose budget this is")],
    tokens: Annotated[
        int | None, typer.Option(min=0, help="Tokens per budget window (0: no LLM call)")
    ] = None,
    unlimited: Annotated[bool, typer.Option(help="No budget for this user")] = False,
) -> None:
    """Give a user their own token budget per window (every replica applies it within 5 s)."""
    if (tokens is None) == (not unlimited):
        raise typer.BadParameter("give either --tokens N or --unlimited")
    _edit_budget(user, tokens, clear=False)
    typer.echo(f"{user}: {'unlimited' if tokens is None else tokens} tokens per window")


@budgets.command("clear")
def clear_budget(user: Annotated[str, typer.Option(help="The user")]) -> None:
    """Put a user back on AGENTSVC_DEFAULT_TOKEN_BUDGET."""
    _edit_budget(user, None, clear=True)
    typer.echo(f"{user}: default budget")


def _edit_budget(user: str, tokens: int | None, *, clear: bool) -> None:
    from app.services.budgets import set_override
    from app.store import budgets as budget_store

    async def edit(_: Settings, db: Database) -> None:
        if not clear:
            await set_override(db, user, tokens, by="cli")
            return
        async with db.transaction() as conn:
            await budget_store.delete_override(conn, user)

    with_db(edit)


@experiments.command("report")
def experiments_report(
    agent: Annotated[str, typer.Argument(help="The agent")],
    since: Annotated[
        str | None,
        typer.Option(help="Start: 24h or 7d (ago), or ISO 8601 with a timezone [default: 24h]"),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="End, excluded: ISO 8601 with a timezone [default: now]")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print GET /agent/experiments/{agent}'s JSON")
    ] = False,
) -> None:
    """Compare the agent's versions, variants and shadows over runs created in a window."""
    from datetime import UTC, datetime

    from app.cli_report import parse_when, render_report, report_work
    from app.errors import AppError

    now = datetime.now(UTC)
    window: dict[str, datetime | None] = {}
    for hint, text in (("--since", since), ("--until", until)):
        try:
            window[hint] = None if text is None else parse_when(text, now=now)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint=hint) from None
    try:
        report = with_db(report_work(agent, window["--since"], window["--until"], now=now))
    except AppError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from None
    typer.echo(report.model_dump_json(indent=2) if as_json else render_report(report))


def with_db(work: Callable[[Settings, Database], Awaitable[T]]) -> T:
    """Run an operator command's `work` against the configured database (an embedded
    SQLite one is migrated first, as `serve` would)."""
    from app.store.db import Database, create_engine

    settings = _settings()
    if settings.is_sqlite:
        from app.store.migrate import upgrade

        upgrade(settings.database_url)

    async def run() -> T:
        db = Database(create_engine(settings.database_url, pool_size=1))
        try:
            return await work(settings, db)
        finally:
            await db.dispose()

    return asyncio.run(run())


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
