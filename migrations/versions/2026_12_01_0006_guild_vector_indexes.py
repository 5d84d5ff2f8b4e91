"""Vector search per guild: the per-model HNSW indexes over every guild go.

Small guilds are now searched exactly through ``ix_images_guild_model`` (guild_id, model_id),
which exists already; large ones get their own partial HNSW index, built by the running bot in
the background with CREATE INDEX CONCURRENTLY (retrieval/store/pgindex.py), never here: a build
in a migration would block writes for minutes.

The old indexes (``ix_images_hnsw_<hash>``, one per model, made by the store at its first search,
so absent from earlier migrations) are dropped with a plain DROP INDEX. DROP INDEX CONCURRENTLY
cannot run inside the transaction the migrations run in; a plain drop reads nothing and rewrites
nothing, so it holds its lock only for the catalog change. What could block writes is waiting for
that lock behind a long transaction, with every write queued behind the wait: ``lock_timeout``
bounds that to 5 s, after which the migration fails, changes nothing, and can be run again.
SQLite never had these indexes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _drop_indexes(pattern: str) -> None:
    bind = op.get_bind()
    names = bind.execute(
        sa.text(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'images'"
            " AND schemaname = current_schema() AND indexname ~ :pattern"
        ),
        {"pattern": pattern},
    ).scalars()
    names = list(names)
    if not names:
        return
    op.execute("SET LOCAL lock_timeout = '5s'")
    for name in names:
        op.execute(f'DROP INDEX IF EXISTS "{name}"')


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _drop_indexes("^ix_images_hnsw_[0-9a-f]{12}$")


def downgrade() -> None:
    # The old code builds its per-model index again at its first search.
    if op.get_bind().dialect.name != "postgresql":
        return
    _drop_indexes("^ix_images_ann_[0-9]+_[0-9a-f]{12}$")
