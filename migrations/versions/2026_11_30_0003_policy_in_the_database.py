"""Policy enforced by the database: each image knows its thread's parent channel, and a member's
images are found without a guild.

``parent_id`` lets a write, a search and a sweep tell that an image in a thread belongs to an
excluded channel. Rows written before this revision have none; their threads were already
deleted by the exclusion itself. ``ix_images_author_id`` serves opt-outs, which cover every server.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("parent_id", sa.BigInteger(), nullable=True))
    op.create_index("ix_images_parent", "images", ["parent_id"], unique=False)
    op.create_index("ix_images_author_id", "images", ["author_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_images_author_id", table_name="images")
    op.drop_index("ix_images_parent", table_name="images")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("parent_id")
