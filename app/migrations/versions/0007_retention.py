"""retention: an index of the finished runs outside sessions, by when they finished

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_runs_retention",
        "runs",
        ["finished_at"],
        postgresql_where=sa.text("session_id IS NULL AND finished_at IS NOT NULL"),
        sqlite_where=sa.text("session_id IS NULL AND finished_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_runs_retention", table_name="runs")
