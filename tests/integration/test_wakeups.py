"""Workers' wake-ups on PostgreSQL: each worker counts the runs it heard of that no claim has
taken yet, from the ready signals and the notices every claim sends at its commit; a LISTEN
connection that is closed or stops answering is opened again."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from app.bus import wakeups as wakeups_module
from app.bus.wakeups import Wakeups
from app.runner.state import Checkpoint
from app.store import queue
from app.store.db import Database, create_engine
from tests.conftest import TABLES, pg_execute
from tests.support.polling import until
from tests.support.runs import new_run

pytestmark = pytest.mark.postgres


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[Database]:
    pg_execute(
        pg_url.replace("postgresql+asyncpg://", "postgresql://"), f"TRUNCATE {TABLES} CASCADE"
    )
    database = Database(create_engine(pg_url, pool_size=2))
    yield database
    await database.dispose()


@pytest.fixture
async def workers(pg_url: str) -> AsyncIterator[tuple[Wakeups, Wakeups]]:
    a, b = Wakeups(owner="worker-a"), Wakeups(owner="worker-b")
    for wakeups in (a, b):
        await wakeups.listen(pg_url)
    yield a, b
    for wakeups in (a, b):
        await wakeups.close()


async def claim(db: Database, owner: str, limit: int) -> int:
    taken = await queue.claim_runs(db, owner=owner, lease_s=30, limit=limit, now=datetime.now(UTC))
    return len(taken)


async def test_a_run_is_worth_claiming_until_a_claim_takes_it(
    db: Database, workers: tuple[Wakeups, Wakeups]
) -> None:
    a, b = workers
    assert not a.may_have_work()
    assert not b.others_claim()
    for _ in range(2):
        await queue.add_run(db, new_run(), checkpoint=Checkpoint(next_seq=1), events=[])

    async def both_heard() -> bool:
        return a.may_have_work() and b.may_have_work()

    await until(both_heard, "the ready signals")
    # A full claim (1 of 1 asked) leaves the other run to claim; b hears a claims too.
    assert await claim(db, "worker-a", limit=1) == 1

    async def b_heard_a() -> bool:
        return b.others_claim()

    await until(b_heard_a, "a's claim notice")
    assert await both_heard()
    assert not a.others_claim()  # its own claims do not count
    # A claim that found fewer runs than it asked for leaves nothing heard of unclaimed.
    assert await claim(db, "worker-a", limit=5) == 1

    async def both_answered() -> bool:
        return not a.may_have_work() and not b.may_have_work()

    await until(both_answered, "the second claim notice")
    # A claim that finds nothing tells no one; a new run is worth claiming again.
    assert await claim(db, "worker-b", limit=5) == 0
    await queue.add_run(db, new_run(), checkpoint=Checkpoint(next_seq=1), events=[])
    await until(both_heard, "the third ready signal")
    assert not a.others_claim()


async def test_a_process_that_signals_itself_claims_once(
    workers: tuple[Wakeups, Wakeups],
) -> None:
    a, _ = workers
    a.ready()  # without a database notice, as on SQLite
    assert a.may_have_work()
    a.claim_begins()
    assert not a.may_have_work()


def _plain(pg_url: str) -> str:
    return pg_url.replace("postgresql+asyncpg://", "postgresql://")


async def _hears_cancels_again(pg_url: str, wakeups: Wakeups) -> None:
    """After a reconnect: it looks for work once, and hears signals again."""
    assert wakeups.ready_event.is_set()
    assert wakeups.may_have_work()
    heard: list[str] = []
    wakeups.on_cancel(heard.append)
    pg_execute(_plain(pg_url), f"NOTIFY {queue.CANCEL_CHANNEL}, 'run-1'")

    async def got_it() -> bool:
        return heard == ["run-1"]

    await until(got_it, "the cancel signal on the new connection")


async def test_a_closed_listen_connection_is_opened_again(
    pg_url: str, workers: tuple[Wakeups, Wakeups]
) -> None:
    a, b = workers
    assert not a.ready_event.is_set()
    pg_execute(
        _plain(pg_url),
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'agentsvc-listen worker-a'",
    )

    async def reopened() -> bool:
        return a.reconnects == 1

    await until(reopened, "a new LISTEN connection")
    await _hears_cancels_again(pg_url, a)
    assert b.reconnects == 0


async def test_a_listen_connection_that_stops_answering_is_replaced(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wakeups_module, "CHECK_S", 0.2)
    monkeypatch.setattr(wakeups_module, "ANSWER_S", 0.5)
    wakeups = Wakeups(owner="worker-stalled")
    await wakeups.listen(pg_url)
    conn = await asyncpg.connect(_plain(pg_url))
    try:
        pid = await conn.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            "agentsvc-listen worker-stalled",
        )
        os.kill(pid, signal.SIGSTOP)  # a peer that is there but never answers
        try:

            async def reopened() -> bool:
                return wakeups.reconnects == 1

            await until(reopened, "a replacement for the stalled connection")
        finally:
            os.kill(pid, signal.SIGCONT)
        await _hears_cancels_again(pg_url, wakeups)
    finally:
        await conn.close()
        await wakeups.close()
