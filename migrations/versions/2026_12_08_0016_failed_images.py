"""Images that failed for good in a way that would fail the same again are kept, ids only, in
``failed_images``: queueing one again (an edit of its message, history read again after a
restart) is refused, so it is not downloaded and counted once more.

A new, empty table: nothing written before is touched. Images that failed before this revision
are not in it; each is recorded the next time it fails.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "failed_images",
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("image_key", sa.BigInteger(), nullable=False),
        sa.Column("lane", sa.String(length=8), nullable=False),
        sa.Column("channel_id", sa.BigInteger(), nullable=False),
        sa.Column("parent_id", sa.BigInteger(), nullable=True),
        sa.Column("author_id", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=40), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "guild_id", "message_id", "image_key", "lane", name=op.f("pk_failed_images")
        ),
    )
    op.create_index("ix_failed_images_channel", "failed_images", ["channel_id"])
    op.create_index(
        "ix_failed_images_parent",
        "failed_images",
        ["parent_id"],
        sqlite_where=sa.text("parent_id IS NOT NULL"),
        postgresql_where=sa.text("parent_id IS NOT NULL"),
    )
    op.create_index("ix_failed_images_author", "failed_images", ["author_id"])
    op.create_index("ix_failed_images_message", "failed_images", ["message_id"])


def downgrade() -> None:
    op.drop_table("failed_images")
