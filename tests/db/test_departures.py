"""Guild departures: recorded once, cancelled on return, forgotten with the backfill's progress."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from retrieval.database.tables import BackfillCursor
from retrieval.policy.departures import Departures

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


async def test_departures_keep_the_first_time_and_forget_on_purge(sqlite_engine):
    departures = Departures(sqlite_engine)
    await departures.record(1, at=T0)
    await departures.record(1, at=T0 + timedelta(hours=5))  # noticed again at the next start
    await departures.record(2, at=T0)
    assert await departures.pending() == {1: T0, 2: T0}

    assert await departures.cancel(2) is True
    assert await departures.cancel(2) is False

    sessions = async_sessionmaker(sqlite_engine)
    async with sessions.begin() as session:
        session.add(BackfillCursor(channel_id=10, guild_id=1, complete=True, updated_at=T0))
        session.add(BackfillCursor(channel_id=20, guild_id=3, complete=True, updated_at=T0))
    await departures.purged(1)
    assert await departures.pending() == {}
    async with sessions() as session:
        left = set((await session.scalars(select(BackfillCursor.channel_id))).all())
    assert left == {20}
