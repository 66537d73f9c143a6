"""The database: engine setup for PostgreSQL and SQLite, and units of work."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import orjson
from asyncpg import exceptions as pg_errors
from sqlalchemy import ColumnElement, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from app.runner.tool_exec import storable

_UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,  # "connection is closed", a protocol left mid-operation
    pg_errors.PostgresConnectionError,
    pg_errors.AdminShutdownError,
    pg_errors.CrashShutdownError,
    pg_errors.CannotConnectNowError,
    pg_errors.TooManyConnectionsError,
)


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database could not be reached or dropped the connection (a
    restart, a failover), rather than refusing a statement: worth trying again later."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, _UNREACHABLE):
            return True
        seen = seen.__cause__
    return False


_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")
"""A JSON `\\u0000` escape: preceded by an even number of backslashes (`\\\\u0000` is the
text `\\u0000`, which stays)."""


def json_dumps(value: object) -> str:
    """JSON text of `value` for a JSON column. A NUL character, which PostgreSQL's JSONB
    refuses, becomes U+FFFD (a model may answer anything)."""
    out = orjson.dumps(value).decode()
    if "\\u0000" in out:
        out = _NUL_ESCAPE.sub(r"\1\\ufffd", out)
    return out


def fitted(value: str, column: ColumnElement[str]) -> str:
    """A model's `value` (a tool name, a call id) as `column` can hold it: storable (as tool
    text is), cut to the column's length. For the trace only: the run keeps the whole value."""
    value = storable(value)
    length = getattr(column.type, "length", None)
    return value if length is None else value[:length]


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An async engine; on SQLite with WAL, a busy timeout and write-ahead transactions."""
    if url.startswith("sqlite"):
        engine = create_async_engine(
            url, json_serializer=json_dumps, json_deserializer=orjson.loads
        )
        _configure_sqlite(engine)
        return engine
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        # No overflow: under load, extra connections are opened and closed again and again
        # (a backend fork each). Nothing holds a connection for long, so waiting is short.
        max_overflow=0,
        pool_recycle=1800,
        json_serializer=json_dumps,
        json_deserializer=orjson.loads,
    )
    event.listen(engine.sync_engine.pool, "checkout", _drop_closed)
    return engine


def _drop_closed(
    _dbapi_conn: object, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
) -> None:
    """A pooled connection the server closed while it sat idle (a restart, a terminated
    backend) is replaced at checkout: the driver already knows, so no round trip is spent
    (a pre-ping would cost three per checkout on asyncpg)."""
    driver = record.driver_connection
    if isinstance(driver, asyncpg.Connection) and driver.is_closed():
        raise DisconnectionError("the server closed this pooled connection")


def _configure_sqlite(engine: AsyncEngine) -> None:
    # pysqlite's own transaction handling defers BEGIN and cannot take the write
    # lock up front; two writers then deadlock on lock upgrade. Take it ourselves.
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: object, _record: ConnectionPoolEntry) -> None:
        dbapi_conn.isolation_level = None  # type: ignore[attr-defined]
        cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            conn.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """Units of work over one engine: `transaction()` commits or rolls back as a whole."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.is_postgres = engine.dialect.name == "postgresql"

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads outside any transaction: on SQLite it takes no write
        lock, so many streams can read while runs write."""
        async with self.engine.connect() as conn:
            yield await conn.execution_options(isolation_level="AUTOCOMMIT")

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
