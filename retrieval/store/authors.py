"""Which servers hold a member's images: the `author_guilds` pairs, kept by the writes.

An opt-out and `/privacy status` cover every server; with the pairs they look in the member's
servers only (a Discord member is in at most a few hundred), each through the images table's
``(guild_id, author_id)`` index, instead of asking every server's rows. On a PostgreSQL
distributed by guild (Citus) that is the difference between one query per server of the member
and one on every machine. The pairs are written in the transaction that stores the images, so a
stored image has its pair; one may outlive its images (deleted message by message), which costs
a look that finds nothing. (A write racing the erasure of the same member in the same server can
leave an image without its pair; that needs an opt-out made meanwhile, and the periodic sweep of
what the policy forbids deletes such an image anyway.)
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import BigInteger, bindparam, delete, exists, func, select
from sqlalchemy.dialects import postgresql, sqlite

from retrieval.database.tables import AuthorGuild, OptOut


def pairs(records: Iterable) -> list[tuple[int, int]]:
    """The distinct (author, guild) pairs of some records, for `remember`."""
    return sorted({(r.author_id, r.guild_id) for r in records})


async def remember(conn, found: list[tuple[int, int]]) -> None:
    """Add the pairs not there yet, except an opted-out member's (whose images the same
    transaction's write refuses). One statement on PostgreSQL (arrays unnested), one
    executemany on SQLite: a batch of 500 images holds a few dozen members.

    Read first, write only what is new: nearly every write finds its pairs there, and on Citus
    a read of a reference table is answered by one node, where a write (even one that ends up
    inserting nothing) goes to every node."""
    if not found:
        return
    known = await conn.execute(
        select(AuthorGuild.author_id, AuthorGuild.guild_id).where(
            AuthorGuild.guild_id.in_(sorted({g for _, g in found})),
            AuthorGuild.author_id.in_(sorted({a for a, _ in found})),
        )
    )
    found = sorted(set(found) - {tuple(row) for row in known})
    if not found:
        return
    if conn.dialect.name == "postgresql":
        authors, guilds = (list(column) for column in zip(*found, strict=True))
        await conn.execute(_REMEMBER_ALL, {"authors": authors, "guilds": guilds})
    else:
        await conn.execute(_REMEMBER_ONE, [{"author_id": a, "guild_id": g} for a, g in found])


def _remember_one():
    author, guild = bindparam("author_id"), bindparam("guild_id")
    chosen = select(author, guild).where(~exists().where(OptOut.user_id == author))
    return (
        sqlite.insert(AuthorGuild)
        .from_select(["author_id", "guild_id"], chosen)
        .on_conflict_do_nothing(index_elements=["author_id", "guild_id"])
    )


def _remember_all():
    ids = postgresql.ARRAY(BigInteger)
    rows = (
        func.unnest(bindparam("authors", type_=ids), bindparam("guilds", type_=ids))
        .table_valued("author_id", "guild_id", name="p")
        .render_derived()
    )
    chosen = select(rows.c.author_id, rows.c.guild_id).where(
        ~exists().where(OptOut.user_id == rows.c.author_id)
    )
    return (
        postgresql.insert(AuthorGuild)
        .from_select(["author_id", "guild_id"], chosen)
        .on_conflict_do_nothing(index_elements=["author_id", "guild_id"])
    )


_REMEMBER_ONE = _remember_one()
_REMEMBER_ALL = _remember_all()


def guilds_of(author_id: int):
    return select(AuthorGuild.guild_id).where(AuthorGuild.author_id == author_id)


def forget(*, guild_id: int, author_id: int | None = None):
    """The pairs of a server, or of one member in it."""
    stmt = delete(AuthorGuild).where(AuthorGuild.guild_id == guild_id)
    if author_id is not None:
        stmt = stmt.where(AuthorGuild.author_id == author_id)
    return stmt


def every_guild():
    """Every server with a pair, one index probe per server (a "loose index scan": the next
    guild id above the last), not a read of every pair. Answered by one node on Citus, where
    the table is a reference table."""
    found = select(func.min(AuthorGuild.guild_id).label("guild_id")).cte("found", recursive=True)
    after = select(func.min(AuthorGuild.guild_id)).where(AuthorGuild.guild_id > found.c.guild_id)
    found = found.union_all(select(after.scalar_subquery()).where(found.c.guild_id.is_not(None)))
    return select(found.c.guild_id).where(found.c.guild_id.is_not(None))


__all__ = ["every_guild", "forget", "guilds_of", "pairs", "remember"]
