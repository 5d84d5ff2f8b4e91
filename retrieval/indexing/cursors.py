"""How far the history of each channel has been read, so backfill resumes instead of restarting.

A cursor covers the messages from ``oldest_id`` to ``newest_id`` (inclusive), and when
``complete`` everything older too. Reading older pages moves ``oldest_id`` back until the
beginning of the channel; reading newer pages (messages posted while the bot was offline) moves
``newest_id`` forward. The caller saves a cursor only once the images of the messages it covers
are in the pipeline's hands and done, so a crash re-reads some messages but never skips one.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from retrieval.database.tables import BackfillCursor

DISCORD_EPOCH_MS = 1_420_070_400_000


def snowflake_at(moment: datetime) -> int:
    """The smallest Discord id a message posted at ``moment`` can have."""
    return max(0, int(moment.timestamp() * 1000) - DISCORD_EPOCH_MS) << 22


@dataclass(frozen=True, slots=True)
class Cursor:
    channel_id: int
    guild_id: int
    oldest_id: int | None = None
    newest_id: int | None = None
    complete: bool = False

    @property
    def fresh(self) -> bool:
        """Nothing read yet: the walk starts at the newest page and goes back."""
        return self.newest_id is None and not self.complete

    def wants_older(self, floor: int | None = None) -> bool:
        """Is there history older than what was read (and not older than ``floor``)?"""
        if self.fresh:
            return True
        if self.complete:
            return False
        return floor is None or self.oldest_id is None or self.oldest_id > floor

    def wants_newer(self, last_message_id: int | None) -> bool:
        """May messages newer than what was read exist? ``last_message_id`` is Discord's hint."""
        if self.fresh:
            return False  # the walk back starts at the newest page anyway
        if self.newest_id is None or last_message_id is None:
            return True  # an empty channel read earlier, or no hint: ask
        return last_message_id > self.newest_id

    def read_older(self, ids: Sequence[int], *, full: bool, floor: int | None = None) -> Cursor:
        """After reading a page going back: ``full`` pages mean more may follow.

        When the page reaches below ``floor`` (the age limit), the cursor stops at the floor
        without being complete, so raising the limit later walks on from there.
        """
        if not ids:
            return replace(self, complete=True)
        oldest = min(ids)
        newest = max(ids) if self.newest_id is None else max(self.newest_id, max(ids))
        if floor is not None and oldest < floor:
            return replace(self, oldest_id=floor, newest_id=newest, complete=False)
        return replace(self, oldest_id=oldest, newest_id=newest, complete=not full)

    def read_newer(self, ids: Sequence[int]) -> Cursor:
        """After reading a page going forward from ``newest_id``."""
        if not ids:
            return self
        newest = max(ids) if self.newest_id is None else max(self.newest_id, max(ids))
        oldest = min(ids) if self.oldest_id is None else self.oldest_id
        return replace(self, oldest_id=oldest, newest_id=newest)


class BackfillCursors:
    """The ``backfill_cursors`` table: one row per channel or thread."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def get(self, channel_id: int) -> Cursor | None:
        async with self._sessions() as session:
            row = await session.get(BackfillCursor, channel_id)
        if row is None:
            return None
        return Cursor(row.channel_id, row.guild_id, row.oldest_id, row.newest_id, row.complete)

    async def save(self, cursor: Cursor) -> None:
        async with self._sessions.begin() as session:
            await session.merge(
                BackfillCursor(
                    channel_id=cursor.channel_id,
                    guild_id=cursor.guild_id,
                    oldest_id=cursor.oldest_id,
                    newest_id=cursor.newest_id,
                    complete=cursor.complete,
                    updated_at=datetime.now(UTC),
                )
            )

    async def forget(self, channel_ids: Collection[int]) -> None:
        """Drop the cursors of deleted channels (ids are never reused)."""
        if not channel_ids:
            return
        async with self._sessions.begin() as session:
            await session.execute(
                delete(BackfillCursor).where(BackfillCursor.channel_id.in_(list(channel_ids)))
            )

    async def forget_guild(self, guild_id: int) -> None:
        async with self._sessions.begin() as session:
            await session.execute(delete(BackfillCursor).where(BackfillCursor.guild_id == guild_id))

    async def in_guild(self, guild_id: int) -> list[Cursor]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(BackfillCursor).where(BackfillCursor.guild_id == guild_id)
            )
            return [
                Cursor(r.channel_id, r.guild_id, r.oldest_id, r.newest_id, r.complete) for r in rows
            ]


@dataclass
class BackfillProgress:
    """Counters since start, for the logs and the status command."""

    channels_total: int = 0
    channels_done: int = 0
    messages_scanned: int = 0
    images_submitted: int = 0
    running: bool = False
    messages_skipped: int = 0  # read, but could not be handled (each one logged)

    def __str__(self) -> str:
        state = "running" if self.running else "idle"
        skipped = f" ({self.messages_skipped:,} skipped)" if self.messages_skipped else ""
        return (
            f"{self.channels_done}/{self.channels_total} channels, "
            f"{self.messages_scanned:,} messages read{skipped}, {self.images_submitted:,} images "
            f"submitted ({state})"
        )
