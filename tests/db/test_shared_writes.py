"""Facts several processes may write at the same moment (the first start of a cluster on one
PostgreSQL): each write lands once, and none of them fails."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from retrieval.database.engine import create_engine
from retrieval.database.state import get_state, set_state
from retrieval.policy.departures import Departures
from retrieval.policy.index_policy import IndexPolicy

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


@contextlib.asynccontextmanager
async def processes(engine: AsyncEngine, n: int) -> AsyncIterator[list[AsyncEngine]]:
    """``engine`` and n - 1 more engines on its database: n processes as PostgreSQL sees them."""
    url = engine.url.render_as_string(hide_password=False)
    others = [create_engine(url) for _ in range(n - 1)]
    try:
        yield [engine, *others]
    finally:
        for other in others:
            await other.dispose()


async def test_processes_recording_the_same_fact_at_once_all_succeed(postgres_engine):
    async with processes(postgres_engine, 6) as engines:
        for attempt in range(5):
            key = f"index_application_id_{attempt}"
            await asyncio.gather(*(set_state(e, key, "1234") for e in engines))
            assert await get_state(postgres_engine, key) == "1234"
        await asyncio.gather(*(set_state(e, "k", str(i)) for i, e in enumerate(engines)))
        assert await get_state(postgres_engine, "k") in {str(i) for i in range(6)}


async def test_a_departure_noticed_by_two_processes_at_once_is_recorded_once(postgres_engine):
    """While the shard count changes, an old and a new process may both own a server."""
    async with processes(postgres_engine, 4) as engines:
        for guild_id in range(1, 6):
            await asyncio.gather(
                *(
                    Departures(e).record(guild_id, at=T0 + timedelta(minutes=i))
                    for i, e in enumerate(engines)
                )
            )
        pending = await Departures(postgres_engine).pending()
        assert sorted(pending) == [1, 2, 3, 4, 5]
        assert all(T0 <= t <= T0 + timedelta(minutes=3) for t in pending.values())


async def test_an_opt_out_or_exclusion_made_through_several_processes_at_once_all_succeed(
    postgres_engine,
):
    """A member who opts out through two shards at once (or two moderators excluding one
    channel): every request succeeds, and each is recorded once."""
    async with processes(postgres_engine, 6) as engines:
        policies = [IndexPolicy(e) for e in engines]
        for policy in policies:
            await policy.load()
        for user_id in range(1, 6):
            await asyncio.gather(*(p.opt_out(user_id) for p in policies))
        for channel_id in range(10, 15):
            await asyncio.gather(
                *(
                    p.exclude_channel(guild_id=7, channel_id=channel_id, by=i)
                    for i, p in enumerate(policies)
                )
            )
        fresh = IndexPolicy(postgres_engine)
        await fresh.load()
        assert all(fresh.is_opted_out(user_id) for user_id in range(1, 6))
        assert fresh.excluded_in(7) == set(range(10, 15))
