"""What may be indexed: members' opt-outs and channels a server excluded.

The indexing path asks on every image, so answers come from in-memory sets, loaded once and
kept in step with every change made through this class.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from retrieval.models import ExcludedChannel, OptOut


class IndexPolicy:
    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._opted_out: set[int] = set()
        self._excluded: dict[int, int] = {}  # channel id → guild id

    async def load(self) -> None:
        async with self._sessions() as session:
            self._opted_out = set((await session.scalars(select(OptOut.user_id))).all())
            rows = await session.execute(
                select(ExcludedChannel.channel_id, ExcludedChannel.guild_id)
            )
            self._excluded = {channel_id: guild_id for channel_id, guild_id in rows}

    def allows(self, *, channel_id: int, author_id: int, parent_id: int | None = None) -> bool:
        """May an image by ``author_id`` in this channel (or thread of ``parent_id``) be indexed?"""
        if author_id in self._opted_out:
            return False
        return channel_id not in self._excluded and parent_id not in self._excluded

    def is_opted_out(self, user_id: int) -> bool:
        return user_id in self._opted_out

    def is_excluded(self, channel_id: int) -> bool:
        return channel_id in self._excluded

    def excluded_in(self, guild_id: int) -> set[int]:
        return {c for c, g in self._excluded.items() if g == guild_id}

    async def opt_out(self, user_id: int) -> None:
        async with self._sessions.begin() as session:
            await session.merge(OptOut(user_id=user_id, opted_out_at=datetime.now(UTC)))
        self._opted_out.add(user_id)

    async def opt_in(self, user_id: int) -> None:
        async with self._sessions.begin() as session:
            await session.execute(delete(OptOut).where(OptOut.user_id == user_id))
        self._opted_out.discard(user_id)

    async def exclude_channel(self, *, guild_id: int, channel_id: int, by: int) -> None:
        async with self._sessions.begin() as session:
            await session.merge(
                ExcludedChannel(
                    channel_id=channel_id,
                    guild_id=guild_id,
                    excluded_by=by,
                    excluded_at=datetime.now(UTC),
                )
            )
        self._excluded[channel_id] = guild_id

    async def include_channel(self, channel_id: int) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                delete(ExcludedChannel).where(ExcludedChannel.channel_id == channel_id)
            )
        self._excluded.pop(channel_id, None)
