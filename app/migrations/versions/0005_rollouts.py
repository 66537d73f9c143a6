"""agent rollouts (traffic policies, experiment assignment, shadow runs) and feedback

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Nullable ADD COLUMNs: no table copy on SQLite, no rewrite on PostgreSQL.
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("experiment", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("variant", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("shadow_of", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("shadow_version", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("feedback", _JSON, nullable=True))
    op.create_index("ix_runs_agent_created", "runs", ["agent", "created_at"])
    op.create_index("ix_runs_shadow_of", "runs", ["shadow_of"])
    op.create_index(
        "ix_runs_shadow_due",
        "runs",
        ["finished_at"],
        postgresql_where=sa.text("shadow_version IS NOT NULL"),
        sqlite_where=sa.text("shadow_version IS NOT NULL"),
    )
    op.create_table(
        "traffic_policies",
        sa.Column("agent", sa.String(length=128), nullable=False),
        sa.Column("policy", _JSON, nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("agent", name=op.f("pk_traffic_policies")),
    )
    op.create_table(
        "run_feedback",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("rating", sa.String(length=8), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("tags", _JSON, nullable=False),
        sa.Column("current", sa.Boolean(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
            name=op.f("fk_run_feedback_run_id_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_feedback")),
    )
    op.create_index("ix_run_feedback_run_id", "run_feedback", ["run_id"])
    op.create_index("ix_run_feedback_created_at", "run_feedback", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_run_feedback_created_at", table_name="run_feedback")
    op.drop_index("ix_run_feedback_run_id", table_name="run_feedback")
    op.drop_table("run_feedback")
    op.drop_table("traffic_policies")
    op.drop_index("ix_runs_shadow_due", table_name="runs")
    op.drop_index("ix_runs_shadow_of", table_name="runs")
    op.drop_index("ix_runs_agent_created", table_name="runs")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("feedback")
        batch_op.drop_column("shadow_version")
        batch_op.drop_column("shadow_of")
        batch_op.drop_column("variant")
        batch_op.drop_column("experiment")
