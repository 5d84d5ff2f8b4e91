"""Which servers hold a member's images: the `author_guilds` pairs, kept by the writes.

An opt-out and `/privacy status` cover every server; with the pairs they look in the member's
servers only (a Discord member is in at most a few hundred), each through the images table's
``(guild_id, author_id)`` index, instead of asking every server's rows. On a PostgreSQL
distributed by guild (Citus) that is the difference between one query per server of the member
and one on every machine. The pairs are written in the transaction that stores the images, so a
stored image always has its pair; one may outlive its images (deleted message by message), which
costs a look that finds nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import bindparam, delete, exists, func, select
from sqlalchemy.dialects import postgresql, sqlite

from retrieval.models import AuthorGuild, OptOut


def pairs(records: Iterable) -> list[dict[str, int]]:
    """The distinct (author, guild) pairs of some records, as parameters for `remember`."""
    seen = {(r.author_id, r.guild_id) for r in records}
    return [{"author_id": a, "guild_id": g} for a, g in sorted(seen)]


def remember(dialect_name: str):
    """INSERT of one pair, unless it is there or the member opted out (an opted-out member's
    images are refused by the same transaction's write)."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    author, guild = bindparam("author_id"), bindparam("guild_id")
    chosen = select(author, guild).where(~exists().where(OptOut.user_id == author))
    return (
        dialect.insert(AuthorGuild)
        .from_select(["author_id", "guild_id"], chosen)
        .on_conflict_do_nothing(index_elements=["author_id", "guild_id"])
    )


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
