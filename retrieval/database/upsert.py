"""Inserts that several processes may run at the same moment for the same key.

A look-up followed by an insert (what `session.merge` does) fails for all but the first of them
with a duplicate key; one `INSERT ... ON CONFLICT` statement does not. SQLite and PostgreSQL
spell it the same way through SQLAlchemy, from their own dialect modules.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite


def upsert(dialect_name: str, model: type, values: dict[str, Any], *, keep: bool = False):
    """Insert ``values``, or update the existing row of the same primary key with them
    (``keep=True``: leave the existing row as it was)."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    key = [column.name for column in model.__table__.primary_key]
    stmt = dialect.insert(model).values(values)
    if keep:
        return stmt.on_conflict_do_nothing(index_elements=key)
    changing = {name: stmt.excluded[name] for name in values if name not in key}
    return stmt.on_conflict_do_update(index_elements=key, set_=changing)
