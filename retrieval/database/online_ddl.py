"""Schema changes that leave writes running, for migrations on a live PostgreSQL.

A plain CREATE INDEX holds every insert and deletion (opt-out erasure included) for the whole
build: minutes on a large table. CREATE and DROP INDEX CONCURRENTLY do not, but cannot run in a
transaction, so they run in Alembic's autocommit block (each revision has a transaction of its
own, see migrations/env.py). A concurrent build that fails (cancelled, the server restarted)
leaves an INVALID index; running the upgrade again drops it and builds it anew. SQLite (one
process) builds and drops the plain way.
"""

from __future__ import annotations

import sqlalchemy as sa

Index = tuple[str, list[str]]  # name, columns


def replace_index(op, *, table: str, new: Index, old: Index) -> None:
    """Build ``new`` on ``table``, then drop ``old``; ``op`` is the migration's alembic.op."""
    (new_name, new_columns), (old_name, _) = new, old
    if op.get_bind().dialect.name != "postgresql":
        op.create_index(new_name, table, new_columns)
        op.drop_index(old_name, table_name=table)
        return
    build_index(op, name=new_name, table=table, definition=f"({', '.join(new_columns)})")
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {old_name}")


def build_index(op, *, name: str, table: str, definition: str) -> None:
    """PostgreSQL: build index ``name`` on ``table`` (``definition``: what follows ON table,
    e.g. ``(a, b)`` or ``USING gin (...) WHERE ...``) CONCURRENTLY, first dropping what a failed
    build left."""
    with op.get_context().autocommit_block():
        valid = op.get_bind().scalar(
            sa.text("SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(:name)"),
            {"name": name},
        )
        if valid is False:  # a failed concurrent build's leftover
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} {definition}")
