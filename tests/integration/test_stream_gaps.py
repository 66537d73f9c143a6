"""A stream never shows a gap the log can fill: lost pushes, lost deltas, no pushes at all.

The run's log is real (a run made through the API, then rewound in the database);
the bus is the in-process one with its push to readers made lossy on purpose.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
from httpx import AsyncClient
from sqlalchemy import delete, update

from app.bus.events import Fanout, InProcessBus, Subscription
from app.runner.events import EventType, RunEvent
from app.services.streams import StreamHub
from app.store.db import Database, create_engine
from app.store.events import list_events
from app.store.runs import events_t, insert_events, runs
from tests.conftest import ALICE


class LossyFanout(Fanout):
    """Pushes to readers only the events whose sequence is not in `drop`."""

    def __init__(self) -> None:
        super().__init__()
        self.drop: set[int] = set()

    def deliver(self, run_id: str, events: Sequence[RunEvent]) -> None:
        super().deliver(run_id, [e for e in events if e.seq not in self.drop])


class LossyBus(InProcessBus):
    """Keeps every event it is given (for `recent`), but loses some pushes."""

    def __init__(self) -> None:
        super().__init__(retention_s=60)
        self.fanout = self.lossy = LossyFanout()

    @property
    def drop(self) -> set[int]:
        return self.lossy.drop

    @drop.setter
    def drop(self, seqs: set[int]) -> None:
        self.lossy.drop = seqs


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(create_engine(db_url))
    yield database
    await database.dispose()


async def finished_run(client: AsyncClient, db: Database) -> tuple[uuid.UUID, list[RunEvent]]:
    body = {"agent": "assistant", "input": "What is 17*23?"}
    run = (await client.post("/agent", json=body, headers=ALICE)).json()
    run_id = uuid.UUID(run["job_id"])
    async with db.read() as conn:
        return run_id, await list_events(conn, run_id, after=-1)


async def rewind(db: Database, run_id: uuid.UUID, keep: int) -> None:
    """Make the run look as it did while running, with only events below `keep` logged."""
    async with db.transaction() as conn:
        await conn.execute(
            delete(events_t).where(events_t.c.run_id == run_id, events_t.c.seq >= keep)
        )
        await conn.execute(
            update(runs).where(runs.c.id == run_id).values(status="running", event_seq=keep)
        )


async def commit(db: Database, run_id: uuid.UUID, events: list[RunEvent]) -> None:
    async with db.transaction() as conn:
        await insert_events(conn, events)
        await conn.execute(
            update(runs)
            .where(runs.c.id == run_id)
            .values(status="completed", event_seq=events[-1].seq + 1)
        )


async def read_all(hub: StreamHub, run_id: uuid.UUID, after: int = -1) -> list[int]:
    """The sequences one reader of the run passes on, to the run's end."""
    seqs: list[int] = []
    async with asyncio.timeout(10), hub.reading(run_id, after=after) as reader:
        while not reader.done:
            seqs += [e.seq for e in await reader.next()]
    return seqs


async def started(hub: StreamHub, run_id: uuid.UUID) -> Subscription:
    """The reader's subscription once it has caught up with the log."""
    for _ in range(200):
        subs = hub.bus.fanout.readers(str(run_id))
        if subs and subs[0].cursor >= 0:
            return subs[0]
        await asyncio.sleep(0.01)
    raise AssertionError("the reader did not start")


async def test_lost_pushes_are_filled_from_the_log(client: AsyncClient, db: Database) -> None:
    run_id, events = await finished_run(client, db)
    await rewind(db, run_id, keep=2)
    bus = LossyBus()
    hub = StreamHub(db, bus, poll_s=30)  # no backstop help within the test
    reader = asyncio.create_task(read_all(hub, run_id))
    await started(hub, run_id)

    await commit(db, run_id, events[2:])
    bus.drop = {e.seq for e in events[2:-1]}
    await bus.publish(events[2:])  # only the terminal event is pushed

    assert await reader == [e.seq for e in events]


async def test_deltas_the_log_never_got_are_passed_over(client: AsyncClient, db: Database) -> None:
    run_id, events = await finished_run(client, db)
    lost = events[2].seq
    async with db.transaction() as conn:
        await conn.execute(
            delete(events_t).where(events_t.c.run_id == run_id, events_t.c.seq == lost)
        )
    hub = StreamHub(db, InProcessBus(retention_s=60), poll_s=30)

    assert await read_all(hub, run_id) == [e.seq for e in events if e.seq != lost]


async def test_uncommitted_deltas_come_from_the_bus(client: AsyncClient, db: Database) -> None:
    run_id, events = await finished_run(client, db)
    await rewind(db, run_id, keep=len(events))
    rid = str(run_id)
    top = len(events)
    deltas = [RunEvent(rid, top + i, EventType.LLM_DELTA, {"text": w}) for i, w in enumerate("abc")]
    bus = LossyBus()
    hub = StreamHub(db, bus, poll_s=30)
    reader = asyncio.create_task(read_all(hub, run_id, after=top - 1))
    await started(hub, run_id)

    bus.drop = {top, top + 1}
    await bus.publish(deltas)  # the reader sees only the third; the bus still holds all
    end = RunEvent(rid, top + 3, EventType.RUN_COMPLETED, {"result": {"output": "abc"}})
    await commit(db, run_id, [*deltas, end])
    bus.drop = set()
    await bus.publish([end])

    assert await reader == [top, top + 1, top + 2, top + 3]


async def test_backstop_finds_events_nobody_pushed(client: AsyncClient, db: Database) -> None:
    run_id, events = await finished_run(client, db)
    await rewind(db, run_id, keep=1)
    hub = StreamHub(db, InProcessBus(retention_s=60), poll_s=0.1)
    stop = asyncio.Event()
    watcher = asyncio.create_task(hub.watch(stop))
    try:
        reader = asyncio.create_task(read_all(hub, run_id))
        await started(hub, run_id)
        await asyncio.sleep(0.3)  # idle longer than the poll interval
        await commit(db, run_id, events[1:])  # committed by "another process": no push

        assert await reader == [e.seq for e in events]
    finally:
        stop.set()
        await watcher


def test_a_reader_that_falls_behind_is_told_to_read_the_log() -> None:
    sub = Subscription("r", limit=3)
    sub.push([RunEvent("r", i, EventType.LLM_DELTA, {"text": "x"}) for i in range(2)])
    sub.push([RunEvent("r", i, EventType.LLM_DELTA, {"text": "x"}) for i in range(2, 4)])

    assert sub.overflowed
    assert sub.nudged
    events, nudged = asyncio.run(sub.take_until(0))
    assert events == []
    assert nudged
