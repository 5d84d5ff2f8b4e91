"""A server's rows of a model by date: ``ix_images_guild_model_posted`` (guild_id, model_id,
posted_at) replaces ``ix_images_guild_model`` (guild_id, model_id).

A search of a large server with only a date filter (``after:``/``before:``) counts its matching
rows and, when few match, reads them: through the old index both read every row of the server
and tested each one's date. The new index reads the date range alone, and serves everything the
old one did (its first two columns are the old index).

PostgreSQL builds the new index and drops the old one CONCURRENTLY
(retrieval/database/online_ddl.py): writes go on, and the bot may keep running.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from retrieval.database.online_ddl import replace_index

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DATED = ("ix_images_guild_model_posted", ["guild_id", "model_id", "posted_at"])
UNDATED = ("ix_images_guild_model", ["guild_id", "model_id"])


def upgrade() -> None:
    replace_index(op, table="images", new=DATED, old=UNDATED)


def downgrade() -> None:
    replace_index(op, table="images", new=UNDATED, old=DATED)
