"""Each process reports each lane of the queue it takes: ``index_consumers.lane`` says whether a
row's figures are the CLIP lane's (images encoded) or the OCR lane's (pictures read). A process
taking both lanes writes one row for each, so a worker that only reads is seen beside those that
encode, with its own throughput and health.

A column with a constant default: a catalog change only on PostgreSQL (and on the reference
table's copies under Citus); rows written before are the CLIP lane's, as they were.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("index_consumers") as table:
        table.add_column(
            sa.Column("lane", sa.String(length=8), server_default="clip", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("index_consumers") as table:
        table.drop_column("lane")
