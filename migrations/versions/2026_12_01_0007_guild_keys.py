"""Keys ready for a PostgreSQL distributed by guild: ``guild_id`` in the images table's primary
and unique keys, a reference table of each member's servers, and an index of models.

- ``images``: the primary key becomes ``(id, guild_id)`` on PostgreSQL (SQLite keeps its rowid
  ``id``, which is what numbers new rows there), and the natural key ``(message_id, image_key)``
  becomes ``(message_id, image_key, guild_id)``. A message belongs to one server, so no two
  existing rows collide.
- ``author_guilds``: (member, server) pairs, filled here from the stored images, so that an
  opt-out or `/privacy status` looks in the member's servers only.
- ``ix_images_model``: which models the index holds and how many rows each, read at start-up
  without reading every row.
- ``ix_images_parent`` and ``ix_index_jobs_parent`` hold only rows in threads: an index of
  mostly NULLs made SQLite's planner sweep excluded channels' threads by reading the whole table.

The upgrade rewrites what it changes: PostgreSQL builds the two keys' indexes again, SQLite
copies the images table (and its vectors) into a new one. Both take a while on a large index and
hold writes meanwhile; run it with the bot stopped, as `python -m bot db upgrade` asks.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _keys(*, primary: list[str], unique: list[str]) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("pk_images", "images", type_="primary")
        op.create_primary_key("pk_images", "images", primary)
        op.drop_constraint("uq_images_message_id", "images", type_="unique")
        op.create_unique_constraint("uq_images_message_id", "images", unique)
    else:
        # SQLite cannot change a table's constraints: batch mode copies it into a new one.
        with op.batch_alter_table("images", recreate="always") as batch:
            batch.drop_constraint("uq_images_message_id", type_="unique")
            batch.create_unique_constraint("uq_images_message_id", unique)


def upgrade() -> None:
    _keys(primary=["id", "guild_id"], unique=["message_id", "image_key", "guild_id"])
    op.create_index("ix_images_model", "images", ["model_id"])
    _parent_index(threads_only=True)
    op.create_table(
        "author_guilds",
        sa.Column("author_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("guild_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("author_id", "guild_id", name=op.f("pk_author_guilds")),
    )
    op.create_index("ix_author_guilds_guild", "author_guilds", ["guild_id"])
    op.execute(
        "INSERT INTO author_guilds (author_id, guild_id) "
        "SELECT DISTINCT author_id, guild_id FROM images"
    )


def downgrade() -> None:
    op.drop_index("ix_author_guilds_guild", table_name="author_guilds")
    op.drop_table("author_guilds")
    op.drop_index("ix_images_model", table_name="images")
    _parent_index(threads_only=False)
    _keys(primary=["id"], unique=["message_id", "image_key"])


def _parent_index(*, threads_only: bool) -> None:
    where = sa.text("parent_id IS NOT NULL") if threads_only else None
    for table in ("images", "index_jobs"):
        name = f"ix_{table}_parent"
        op.drop_index(name, table_name=table)
        op.create_index(name, table, ["parent_id"], sqlite_where=where, postgresql_where=where)
