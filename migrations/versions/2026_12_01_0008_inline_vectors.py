"""Vectors kept in the images row on PostgreSQL, not in its TOAST table.

A 512-d float32 vector is 2 KB, just over the size from which PostgreSQL moves a row's long
values out of line (``toast_tuple_target``, 2 KB by default): every vector read then costs a
lookup in the TOAST index and one or two more page reads. Exact searches read every candidate's
vector (a small guild, or a selective filter in a large one): one 4,000-row channel of a
200,000-row guild took 19 ms at p50 with the vectors out of line and 5.6 ms inline
(benchmarks/RESULTS.md, "Vectors in the row"). Raising the table's ``toast_tuple_target`` to its
maximum (8,160 bytes, a whole page) keeps rows with vectors of up to about 1,900 dimensions
inline, and spares each write a compression attempt (``SET STORAGE MAIN`` would keep them inline
too, but tries pglz on every vector first, and float noise does not compress).

A storage parameter is a catalog change under a SHARE UPDATE EXCLUSIVE lock: reads and writes go
on. Rows stored before keep their out-of-line vectors until rewritten (``VACUUM FULL images``
or pg_repack, at a time the operator chooses); new rows are inline. SQLite has no TOAST.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The largest value PostgreSQL accepts: BLCKSZ (8,192) less the page header.
TOAST_TUPLE_TARGET = 8160


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE images SET (toast_tuple_target = {TOAST_TUPLE_TARGET})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE images RESET (toast_tuple_target)")
