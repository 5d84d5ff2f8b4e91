"""What may be indexed: members' opt-outs and channels a server excluded.

The database is the authority: every write and every search checks the policy tables itself
(retrieval/store/allowed.py), whichever process wrote and whatever it remembered. The sets kept
here are a hint that saves downloading and encoding what would be refused. Every change bumps a
version in `bot_state` in the same transaction, and `watch()` reloads when another process
changed it, within a second or so.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from retrieval.database.errors import database_errors
from retrieval.database.tables import UNKNOWN_PARENT, BotState, ExcludedChannel, OptOut
from retrieval.database.upsert import upsert
from retrieval.errors import StoreUnavailable

log = logging.getLogger(__name__)

VERSION_KEY = "policy_version"
# How often other processes' changes are looked for: one primary-key read each time.
WATCH_INTERVAL_S = 1.0


class IndexPolicy:
    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._opted_out: set[int] = set()
        self._excluded: dict[int, int] = {}  # channel id → guild id
        self._version: str | None = None

    async def load(self) -> None:
        with database_errors():
            async with self._sessions() as session:
                version = await self._read_version(session)
                opted_out = set((await session.scalars(select(OptOut.user_id))).all())
                rows = await session.execute(
                    select(ExcludedChannel.channel_id, ExcludedChannel.guild_id)
                )
                excluded = {channel_id: guild_id for channel_id, guild_id in rows}
        self._opted_out, self._excluded, self._version = opted_out, excluded, version

    async def refresh(self) -> bool:
        """Reload if any process changed the policy since; True when it did."""
        with database_errors():
            async with self._sessions() as session:
                version = await self._read_version(session)
        if version == self._version:
            return False
        await self.load()
        return True

    async def watch(self, interval_s: float = WATCH_INTERVAL_S) -> None:
        """Keep the hint current until cancelled; a database outage only delays it."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                if await self.refresh():
                    log.info("policy changed elsewhere; reloaded opt-outs and exclusions")
            except StoreUnavailable as exc:
                log.warning("could not check for policy changes: %s", exc)

    @staticmethod
    async def _read_version(session: AsyncSession) -> str | None:
        return await session.scalar(select(BotState.value).where(BotState.key == VERSION_KEY))

    async def _changed(self, session: AsyncSession) -> None:
        # A fresh token rather than a counter: two processes never need to read it first.
        self._version = uuid.uuid4().hex
        values = {"key": VERSION_KEY, "value": self._version}
        await session.execute(upsert(_dialect(session), BotState, values))

    def allows(self, *, channel_id: int, author_id: int, parent_id: int | None = None) -> bool:
        """May an image by ``author_id`` in this channel (or thread of ``parent_id``) be indexed?
        Not from a thread whose channel is unknown (UNKNOWN_PARENT): it may be an excluded one."""
        if author_id in self._opted_out or parent_id == UNKNOWN_PARENT:
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
            # Kept as first recorded: the time the member's wish took effect.
            values = {"user_id": user_id, "opted_out_at": datetime.now(UTC)}
            await session.execute(upsert(_dialect(session), OptOut, values, keep=True))
            await self._changed(session)
        self._opted_out.add(user_id)

    async def opt_in(self, user_id: int) -> None:
        async with self._sessions.begin() as session:
            await session.execute(delete(OptOut).where(OptOut.user_id == user_id))
            await self._changed(session)
        self._opted_out.discard(user_id)

    async def exclude_channel(self, *, guild_id: int, channel_id: int, by: int) -> None:
        async with self._sessions.begin() as session:
            values = {
                "channel_id": channel_id,
                "guild_id": guild_id,
                "excluded_by": by,
                "excluded_at": datetime.now(UTC),
            }
            await session.execute(upsert(_dialect(session), ExcludedChannel, values))
            await self._changed(session)
        self._excluded[channel_id] = guild_id

    async def include_channel(self, channel_id: int) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                delete(ExcludedChannel).where(ExcludedChannel.channel_id == channel_id)
            )
            await self._changed(session)
        self._excluded.pop(channel_id, None)


def _dialect(session: AsyncSession) -> str:
    return session.bind.dialect.name
