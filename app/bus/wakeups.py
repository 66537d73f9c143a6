"""Wake-ups between processes: new work for workers, cancel requests for executors.

PostgreSQL NOTIFY carries them across processes (sent inside the transaction that
makes the change, so they arrive only after it commits); the same object also
wakes this process directly. They are hints: polling and lease heartbeats remain
the backstop when a notification is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg
from sqlalchemy.engine import make_url

from app.store.queue import CANCEL_CHANNEL, READY_CHANNEL

log = logging.getLogger(__name__)


class Wakeups:
    """Ready and cancel signals for this process."""

    def __init__(self) -> None:
        self.ready_event = asyncio.Event()
        """Set when runs may be waiting to be claimed; the worker clears it."""
        self._cancel_handlers: list[Callable[[str], None]] = []
        self._conn: asyncpg.Connection | None = None

    def ready(self) -> None:
        """Runs may be waiting to be claimed."""
        self.ready_event.set()

    def on_cancel(self, handler: Callable[[str], None]) -> None:
        self._cancel_handlers.append(handler)

    def cancel(self, run_id: str) -> None:
        """Someone asked to cancel `run_id`; whoever holds it stops it."""
        for handler in self._cancel_handlers:
            handler(run_id)

    async def listen(self, database_url: str) -> None:
        """Receive other processes' signals (PostgreSQL only; a no-op elsewhere)."""
        url = make_url(database_url)
        if url.get_backend_name() != "postgresql":
            return
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        # LISTEN needs a session of its own, never a pooled (or transaction-pooled) one.
        self._conn = await asyncpg.connect(dsn)
        await self._conn.add_listener(READY_CHANNEL, self._on_ready)
        await self._conn.add_listener(CANCEL_CHANNEL, self._on_cancel)

    def _on_ready(self, *_: object) -> None:
        self.ready()

    def _on_cancel(self, _conn: object, _pid: object, _channel: object, payload: object) -> None:
        self.cancel(str(payload))

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
