"""The migrations build the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from app.store.db import create_engine
from app.store.models import Base

# An expression index (`priority DESC`) that autogenerate cannot compare: it reports it as
# removed and added again whatever the database holds.
_UNCOMPARABLE_INDEXES = {"ix_runs_claim"}


def _differences(conn: Connection) -> list[object]:
    found = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    return [
        d
        for d in found
        if not (
            isinstance(d, tuple)
            and d[0] in ("add_index", "remove_index")
            and d[1].name in _UNCOMPARABLE_INDEXES
        )
    ]


async def test_the_migrated_schema_matches_the_models(db_url: str) -> None:
    engine = create_engine(db_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(_differences)
    finally:
        await engine.dispose()
    assert differences == []
