"""A database that refuses chosen rows, as it refuses a row it cannot take (PostgreSQL a NUL in
a text, SQLSTATE 22021): a trigger on the table, on either database."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.citus import citus_wanted


async def refuse_rows(engine: AsyncEngine, table: str, *, filename: str) -> str:
    """Every row written to ``table`` (index_jobs or images) with this file name is refused from
    now on; returns the code the refusal carries (its failures count as ``refused:<code>``)."""
    if citus_wanted() and table == "images":
        pytest.skip("Citus runs no triggers on a distributed table")
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(
                text(
                    f"CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                    f"BEGIN IF NEW.filename = '{filename}' THEN RAISE EXCEPTION 'refused row' "
                    "USING ERRCODE = '22021'; END IF; RETURN NEW; END $$"
                )
            )
            await conn.execute(
                text(
                    f"CREATE TRIGGER refuse_{table} BEFORE INSERT OR UPDATE ON {table} "
                    f"FOR EACH ROW EXECUTE FUNCTION refuse_{table}()"
                )
            )
            return "22021"
        for event in ("INSERT", "UPDATE"):
            await conn.execute(
                text(
                    f"CREATE TRIGGER refuse_{table}_{event.lower()} BEFORE {event} ON {table} "
                    f"WHEN NEW.filename = '{filename}' "
                    "BEGIN SELECT RAISE(ABORT, 'refused row'); END"
                )
            )
        return "SQLITE_CONSTRAINT_TRIGGER"
