"""The database's clock, for every time that several processes write and compare.

Leases, retry times, queue ages, heartbeats and departures are read by processes other than the
one that wrote them. Each process's own clock may be minutes off (a container without time sync,
a laptop back from sleep): a gateway ahead would queue live posts nobody claims until its clock's
"now" comes, a consumer ahead would take claims still held, a node ahead would delete the
others' heartbeats. The database's clock is one clock for all of them, so such times are written
and compared in SQL with `db_now()` and never computed from ``datetime.now()``.

On PostgreSQL that is ``now()`` (the transaction's start). SQLite's ``'now'`` is formatted here
the way SQLAlchemy stores datetimes there ('YYYY-MM-DD HH:MM:SS.ffffff', UTC), so that it
compares, as text, with every value already in the tables (`tables.sqlite_text`) and reads back
as UTC through `tables.UTCDateTime`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Float, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from retrieval.database.tables import UTCDateTime


class db_now(FunctionElement):  # noqa: N801 - a SQL function, named like `func.now`
    """The database's current time, ``after_s`` seconds on (negative: ago): a number, or an
    expression of the statement."""

    type = UTCDateTime()
    inherit_cache = True
    name = "db_now"

    def __init__(self, after_s: float | ColumnElement[float] = 0.0) -> None:
        offset = after_s if isinstance(after_s, ColumnElement) else literal(float(after_s), Float)
        super().__init__(offset)


@compiles(db_now, "postgresql")
def _postgres_now(element: db_now, compiler, **kw) -> str:
    offset = compiler.process(element.clauses, **kw)
    return f"(now() + CAST({offset} AS DOUBLE PRECISION) * INTERVAL '1 second')"


@compiles(db_now, "sqlite")
def _sqlite_now(element: db_now, compiler, **kw) -> str:
    # Julian days: the offset needs no formatting as text (which a tiny float would break), and
    # SQLite rounds to the millisecond; the three zeros make SQLAlchemy's six digits.
    offset = compiler.process(element.clauses, **kw)
    return f"(strftime('%Y-%m-%d %H:%M:%f', julianday('now') + ({offset}) / 86400.0) || '000')"


def moment(at: datetime | None, *, after_s: float = 0.0) -> ColumnElement[datetime]:
    """``at`` (a moment a caller chose, e.g. a test's) moved by ``after_s``, or else the
    database's clock: the default of every function that takes an optional ``now``."""
    if at is None:
        return db_now(after_s)
    return literal(at + timedelta(seconds=after_s), UTCDateTime())


async def database_now(conn: AsyncConnection | AsyncEngine) -> datetime:
    """The database's current time (UTC), for a comparison that has to be made in Python."""
    if isinstance(conn, AsyncEngine):
        async with conn.connect() as connection:
            return await database_now(connection)
    return await conn.scalar(select(db_now()))
