"""Servers the bot has left, waiting out the grace period before their index is purged.

A row is written when the bot leaves and removed when it is re-added or the purge is done, so a
purge that fell due while the bot was down still happens at the next start. The time is the
database's (`retrieval/database/clock.py`): the process that purges may not be the one that noticed.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from retrieval.database.clock import moment
from retrieval.database.tables import BackfillCursor, GuildDeparture
from retrieval.database.upsert import upsert


class Departures:
    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def record(self, guild_id: int, *, at: datetime | None = None) -> None:
        """Note the departure, as of the database's clock (or ``at``); a second notice (e.g. at
        the next start) keeps the first time.

        One statement, since two processes may notice it at once: while the shard count
        changes, a server briefly belongs to a process of the old count and one of the new."""
        async with self._sessions.begin() as session:
            values = {"guild_id": guild_id, "left_at": moment(at)}
            await session.execute(
                upsert(session.bind.dialect.name, GuildDeparture, values, keep=True)
            )

    async def cancel(self, guild_id: int) -> bool:
        """The bot is back: keep the index. True when a purge was pending."""
        async with self._sessions.begin() as session:
            result = await session.execute(
                delete(GuildDeparture).where(GuildDeparture.guild_id == guild_id)
            )
        return result.rowcount > 0

    async def pending(self) -> dict[int, datetime]:
        """Every recorded departure: guild id → when the bot left (UTC)."""
        async with self._sessions() as session:
            rows = await session.execute(select(GuildDeparture.guild_id, GuildDeparture.left_at))
            # SQLite hands datetimes back naive; they were written as UTC.
            return {g: t if t.tzinfo else t.replace(tzinfo=UTC) for g, t in rows}

    async def purged(self, guild_id: int) -> None:
        """The index is gone: forget the departure, and the backfill's progress with it, so a
        later re-add reads the server's history again instead of resuming past it."""
        async with self._sessions.begin() as session:
            await session.execute(delete(GuildDeparture).where(GuildDeparture.guild_id == guild_id))
            await session.execute(delete(BackfillCursor).where(BackfillCursor.guild_id == guild_id))
