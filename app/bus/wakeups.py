"""Wake-ups between processes: new work for workers, cancel requests for executors.

PostgreSQL NOTIFY carries them across processes (sent inside the transaction that
makes the change, so they arrive only after it commits); the same object also
wakes this process directly. They are hints: polling and lease heartbeats remain
the backstop when a notification is lost.

Every worker hears every new run, but one claim takes it. So that several workers do not
all claim for one run, each counts the runs it heard of that no claim has answered yet:
+1 per ready signal, −n when any worker says it claimed n (`agentsvc_claimed`, sent at the
claim's commit, so after the ready signals of the runs it could see), never below 0, and
at least 1 after a claim that filled every slot it asked for (more may wait). A worker
woken while the count is 0 has nothing to claim. Workers that know others claim from the
same queue wait a random few milliseconds before claiming, so that usually one of them
claims and the others hear of it first. A run the count missed (queued without a signal,
or a signal lost) waits at most for the poll.

The LISTEN connection is watched: when PostgreSQL closes it (a restart, a failover, an idle
timeout somewhere in between) or it stops answering, it is opened again with backoff, and
the worker looks for work once, since signals sent meanwhile are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import asyncpg
from sqlalchemy.engine import make_url

from app.store.queue import CANCEL_CHANNEL, CLAIMED_CHANNEL, READY_CHANNEL

log = logging.getLogger(__name__)

OTHERS_FORGOTTEN_S = 60.0
"""A worker that has not claimed for this long no longer counts as another claimer."""
CHECK_S = 15.0
"""An idle LISTEN connection is asked to answer this often (a dead peer sends no close)."""
ANSWER_S = 5.0
"""How long it may take to answer (or to connect) before it counts as lost."""
LISTEN_APPLICATION = "agentsvc-listen"
"""The application name of each process's LISTEN session (then its owner), as
`pg_stat_activity` shows it."""
RECONNECT_MAX_S = 30.0
"""The longest wait between attempts to open it again."""


class Wakeups:
    """Ready and cancel signals for this process."""

    def __init__(self, *, owner: str) -> None:
        """`owner`: this process's lease owner name, to tell its own claims from others'."""
        self.ready_event = asyncio.Event()
        """Set when runs may be waiting to be claimed; the worker clears it."""
        self._owner = owner
        self._unclaimed = 0
        """Runs heard of (other processes' signals) that no claim has answered yet."""
        self._local = False
        """This process signalled directly since its last claim began."""
        self._others_at = -OTHERS_FORGOTTEN_S
        self._cancel_handlers: list[Callable[[str], None]] = []
        self._conn: asyncpg.Connection | None = None
        self._keeper: asyncio.Task[None] | None = None
        self.reconnects = 0
        """How many times the LISTEN connection was opened again after it was lost."""

    def ready(self) -> None:
        """Runs may be waiting to be claimed."""
        self._local = True
        self.ready_event.set()

    def may_have_work(self) -> bool:
        """Whether a claim now may find a run that no claim has answered yet."""
        return self._local or self._unclaimed > 0

    def claim_begins(self) -> None:
        """This process is about to claim: it answers its own direct signals."""
        self._local = False

    def others_claim(self) -> bool:
        """Whether other workers claimed from the same queue lately."""
        return time.monotonic() - self._others_at < OTHERS_FORGOTTEN_S

    def on_cancel(self, handler: Callable[[str], None]) -> None:
        self._cancel_handlers.append(handler)

    def cancel(self, run_id: str) -> None:
        """Someone asked to cancel `run_id`; whoever holds it stops it."""
        for handler in self._cancel_handlers:
            handler(run_id)

    async def listen(self, database_url: str) -> None:
        """Receive other processes' signals (PostgreSQL only; a no-op elsewhere). The first
        connection must open; later losses are repaired in the background."""
        url = make_url(database_url)
        if url.get_backend_name() != "postgresql":
            return
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        lost = await self._connect(dsn)
        self._keeper = asyncio.create_task(self._keep_listening(dsn, lost))

    async def _connect(self, dsn: str) -> asyncio.Event:
        """Open the LISTEN connection; the event is set once it is closed or lost."""
        # LISTEN needs a session of its own, never a pooled (or transaction-pooled) one.
        conn = await asyncpg.connect(
            dsn,
            timeout=ANSWER_S,
            server_settings={"application_name": f"{LISTEN_APPLICATION} {self._owner}"[:63]},
        )
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            await conn.add_listener(READY_CHANNEL, self._on_ready)
            await conn.add_listener(CLAIMED_CHANNEL, self._on_claimed)
            await conn.add_listener(CANCEL_CHANNEL, self._on_cancel)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        return lost

    async def _keep_listening(self, dsn: str, lost: asyncio.Event) -> None:
        """Watch the connection; open it again, with backoff, whenever it is lost."""
        while True:
            await self._watch(lost)
            log.warning("wake-ups: the LISTEN connection was lost; opening it again")
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.terminate()
            backoff_s = 0.5
            while True:
                try:
                    lost = await self._connect(dsn)
                    break
                except Exception as exc:  # this task must outlive any failure
                    log.warning("wake-ups: cannot listen yet (%r); retry in %.1f s", exc, backoff_s)
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, RECONNECT_MAX_S)
            self.reconnects += 1
            # Ready signals sent while away are lost: look for work once.
            self._unclaimed = max(self._unclaimed, 1)
            self.ready_event.set()

    async def _watch(self, lost: asyncio.Event) -> None:
        """Return once the connection is closed, or fails to answer within ANSWER_S."""
        while True:
            try:
                await asyncio.wait_for(lost.wait(), CHECK_S)
                return
            except TimeoutError:
                pass
            conn = self._conn
            if conn is None:
                return
            try:
                await conn.fetchval("SELECT 1", timeout=ANSWER_S)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return

    def _on_ready(self, *_: object) -> None:
        self._unclaimed += 1
        self.ready_event.set()

    def _on_claimed(self, _conn: object, _pid: object, _channel: object, payload: object) -> None:
        try:
            owner, taken, asked = str(payload).rsplit(" ", 2)
            n, limit = int(taken), int(asked)
        except ValueError:
            log.warning("unreadable claim notice %r", payload)
            return
        self._unclaimed = max(self._unclaimed - n, 1 if n >= limit else 0)
        if owner != self._owner:
            self._others_at = time.monotonic()

    def _on_cancel(self, _conn: object, _pid: object, _channel: object, payload: object) -> None:
        self.cancel(str(payload))

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
