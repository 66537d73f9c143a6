"""per-user token budget overrides

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-11
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.store.models import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "budget_overrides",
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("tokens_per_window", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_budget_overrides")),
    )


def downgrade() -> None:
    op.drop_table("budget_overrides")
