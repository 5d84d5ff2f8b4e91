"""Opt-outs, excluded channels, backfill cursors and guild departures.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "opt_outs",
        sa.Column("user_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("opted_out_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_opt_outs")),
    )
    op.create_table(
        "excluded_channels",
        sa.Column("channel_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("excluded_by", sa.BigInteger(), nullable=False),
        sa.Column("excluded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("channel_id", name=op.f("pk_excluded_channels")),
    )
    op.create_index(
        op.f("ix_excluded_channels_guild_id"), "excluded_channels", ["guild_id"], unique=False
    )
    op.create_table(
        "backfill_cursors",
        sa.Column("channel_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("oldest_id", sa.BigInteger(), nullable=True),
        sa.Column("newest_id", sa.BigInteger(), nullable=True),
        sa.Column("complete", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("channel_id", name=op.f("pk_backfill_cursors")),
    )
    op.create_index(
        op.f("ix_backfill_cursors_guild_id"), "backfill_cursors", ["guild_id"], unique=False
    )
    op.create_table(
        "guild_departures",
        sa.Column("guild_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("left_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("guild_id", name=op.f("pk_guild_departures")),
    )


def downgrade() -> None:
    op.drop_table("guild_departures")
    op.drop_index(op.f("ix_backfill_cursors_guild_id"), table_name="backfill_cursors")
    op.drop_table("backfill_cursors")
    op.drop_index(op.f("ix_excluded_channels_guild_id"), table_name="excluded_channels")
    op.drop_table("excluded_channels")
    op.drop_table("opt_outs")
