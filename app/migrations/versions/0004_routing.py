"""the model tier a run's agent policy chose, and why

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-11
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable ADD COLUMNs: no table copy on SQLite, no rewrite on PostgreSQL.
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model_tier", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("model_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("model_reason")
        batch_op.drop_column("model_tier")
