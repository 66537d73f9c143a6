"""Workers' wake-ups on PostgreSQL: each worker counts the runs it heard of that no claim has
taken yet, from the ready signals and the notices every claim sends at its commit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

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
