"""A server's rows of a model by date: ``ix_images_guild_model_posted`` (guild_id, model_id,
posted_at) replaces ``ix_images_guild_model`` (guild_id, model_id).

A search of a large server with only a date filter (``after:``/``before:``) counts its matching
rows and, when few match, reads them: through the old index both read every row of the server
and tested each one's date. The new index reads the date range alone, and serves everything the
old one did (its first two columns are the old index).

PostgreSQL builds the new index with CREATE INDEX CONCURRENTLY and drops the old one with DROP
INDEX CONCURRENTLY, outside the migration's transaction (an autocommit block): neither blocks
writes, and the bot may keep running. A plain CREATE INDEX would hold every insert and deletion
(opt-out erasure included) for the whole build, minutes on a large index. A concurrent build
that fails (cancelled, the server restarted) leaves an INVALID index; running the upgrade again
drops it and builds it anew. SQLite (one process, its searches read in-memory matrices) builds
and drops them the plain way.

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DATED = ("ix_images_guild_model_posted", ["guild_id", "model_id", "posted_at"])
UNDATED = ("ix_images_guild_model", ["guild_id", "model_id"])


def _replace(*, new: tuple[str, list[str]], old: tuple[str, list[str]]) -> None:
    (new_name, new_columns), (old_name, _) = new, old
    if op.get_bind().dialect.name != "postgresql":
        op.create_index(new_name, "images", new_columns)
        op.drop_index(old_name, table_name="images")
        return
    with op.get_context().autocommit_block():
        bind = op.get_bind()
        valid = bind.scalar(
            sa.text("SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(:name)"),
            {"name": new_name},
        )
        if valid is False:  # a failed concurrent build's leftover
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {new_name}")
        columns = ", ".join(new_columns)
        op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {new_name} ON images ({columns})")
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {old_name}")


def upgrade() -> None:
    _replace(new=DATED, old=UNDATED)


def downgrade() -> None:
    _replace(new=UNDATED, old=DATED)
