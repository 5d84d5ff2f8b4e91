"""The operator's view of a cluster: every process that encodes images reports itself in
``index_consumers``, and the queue's depth by state and its oldest job are read from one narrow
index.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "index_consumers",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("shards", sa.String(length=100), nullable=True),
        sa.Column("model_id", sa.String(length=200), nullable=False),
        sa.Column("device", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("images_stored", sa.BigInteger(), nullable=False),
        sa.Column("rate", sa.Float(), nullable=False),
        sa.Column("in_hand", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_index_consumers")),
    )
    # Jobs per state and the oldest first try without reading the whole table; claimed_until
    # stays out of indexes, so claims and lease renewals remain cheap in-place updates.
    op.create_index("ix_index_jobs_age", "index_jobs", ["attempts", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_index_jobs_age", table_name="index_jobs")
    op.drop_table("index_consumers")
