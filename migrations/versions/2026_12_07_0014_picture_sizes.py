"""Queued images carry what a smaller copy is asked for with: ``index_jobs.proxy_url`` (Discord's
media proxy copy of the picture), ``width`` and ``height`` (its size as the message gives it).

Nullable columns without defaults: a catalog change only, on SQLite and PostgreSQL alike, and
Citus propagates it to the distributed table's shards. Rows queued before keep NULLs and are
downloaded from their ``url`` as before.

Revision ID: 0014
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("index_jobs") as table:
        table.add_column(sa.Column("proxy_url", sa.Text(), nullable=True))
        table.add_column(sa.Column("width", sa.Integer(), nullable=True))
        table.add_column(sa.Column("height", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("index_jobs") as table:
        table.drop_column("height")
        table.drop_column("width")
        table.drop_column("proxy_url")
