"""The words read from each picture, kept in its own row of ``images``, with a text index.

Three nullable columns: ``words`` (the normalised text the OCR lane read; NULL until it was read,
empty when the picture has none), ``words_model`` (the OCR model that read it) and
``words_confidence`` (the lowest confidence of the lines kept). In the images row, not a table
beside it: every deletion of an image (a message, a channel, a member's opt-out, a server's purge,
the policy's sweep) takes its words with it in the same statement, and on Citus the words are
distributed with their image by construction. Adding a nullable column without a default changes
the catalog only, on SQLite and PostgreSQL alike.

The text index:

- PostgreSQL: a GIN index over ``(guild_id, words gin_trgm_ops)`` (extensions ``pg_trgm`` and
  ``btree_gin``, both trusted and shipped with PostgreSQL), partial on ``words <> ''``: a
  substring search (``LIKE '%...%'``) of one server reads that server's trigram entries only.
  Built CONCURRENTLY (retrieval/database/online_ddl.py): writes go on meanwhile.
- SQLite: an FTS5 table ``images_words`` with the ``trigram`` tokenizer (SQLite 3.34 or later;
  substrings, and Chinese or Japanese text written without spaces) over the images table's own
  column (external content: the text is stored once; ``columnsize=0``: no per-row size table, so
  images without words cost the index nothing), kept in step by three triggers. A later
  revision that rebuilds ``images`` (batch mode) must create the triggers again.

Reading is a lane of the durable queue: ``index_jobs.lane`` says which (``clip``: the vector, the
default of every row queued before; ``ocr``: the words), an image is queued once per lane (the
unique key gains the lane), and a lane's due rows are claimed through ``(lane, priority,
retry_at)``. The queue is small (rows leave it as they are done): its key and index are changed in
place, the table rebuilt on SQLite.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from retrieval.database.online_ddl import build_index

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_images_words"
FTS = "images_words"
_SQLITE_TEXT_INDEX = (
    f"CREATE VIRTUAL TABLE {FTS} USING fts5(words, content='images', content_rowid='id', "
    "columnsize=0, tokenize='trigram')",
    f"CREATE TRIGGER {FTS}_insert AFTER INSERT ON images WHEN new.words <> '' BEGIN "
    f"INSERT INTO {FTS}(rowid, words) VALUES (new.id, new.words); END",
    f"CREATE TRIGGER {FTS}_delete AFTER DELETE ON images WHEN old.words <> '' BEGIN "
    f"INSERT INTO {FTS}({FTS}, rowid, words) VALUES ('delete', old.id, old.words); END",
    f"CREATE TRIGGER {FTS}_update AFTER UPDATE OF words ON images BEGIN "
    f"INSERT INTO {FTS}({FTS}, rowid, words) SELECT 'delete', old.id, old.words "
    "WHERE old.words <> ''; "
    f"INSERT INTO {FTS}(rowid, words) SELECT new.id, new.words WHERE new.words <> ''; END",
)


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("index_jobs") as jobs:
        jobs.add_column(
            sa.Column("lane", sa.String(length=8), nullable=False, server_default="clip")
        )
        jobs.drop_constraint("uq_index_jobs_message_id", type_="unique")
        jobs.create_unique_constraint("uq_index_jobs_lane", ["message_id", "image_key", "lane"])
        jobs.drop_index("ix_index_jobs_due")
        jobs.create_index("ix_index_jobs_due", ["lane", "priority", "retry_at"])
    with op.batch_alter_table("images", recreate="never") as images:
        images.add_column(sa.Column("words", sa.Text(), nullable=True))
        images.add_column(sa.Column("words_model", sa.String(length=200), nullable=True))
        images.add_column(sa.Column("words_confidence", sa.Float(), nullable=True))
    if not postgres:
        for statement in _SQLITE_TEXT_INDEX:
            op.execute(statement)
        return
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gin")
    build_index(
        op,
        name=INDEX,
        table="images",
        definition="USING gin (guild_id, words gin_trgm_ops) WHERE words <> ''",
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
    else:
        for trigger in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS {FTS}_{trigger}")
        op.execute(f"DROP TABLE IF EXISTS {FTS}")
    op.execute("DELETE FROM index_jobs WHERE lane <> 'clip'")
    with op.batch_alter_table("index_jobs") as jobs:
        jobs.drop_index("ix_index_jobs_due")
        jobs.create_index("ix_index_jobs_due", ["priority", "retry_at"])
        jobs.drop_constraint("uq_index_jobs_lane", type_="unique")
        jobs.create_unique_constraint("uq_index_jobs_message_id", ["message_id", "image_key"])
        jobs.drop_column("lane")
    with op.batch_alter_table("images", recreate="never") as images:
        images.drop_column("words_confidence")
        images.drop_column("words_model")
        images.drop_column("words")
