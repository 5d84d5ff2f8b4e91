"""Each process's heartbeat says whether it is healthy: ``index_consumers.problem`` holds why a
process is not (a task of it keeps failing), NULL while it is.

A nullable column without a default: a catalog change only, on SQLite and PostgreSQL alike, and
Citus propagates it to the reference table's copies.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("index_consumers") as table:
        table.add_column(sa.Column("problem", sa.String(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("index_consumers") as table:
        table.drop_column("problem")
