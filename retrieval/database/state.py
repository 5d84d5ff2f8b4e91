"""Small key/value facts kept between runs (the bot_state table)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from retrieval.database.tables import BotState
from retrieval.database.upsert import upsert


async def get_state(engine: AsyncEngine, key: str) -> str | None:
    async with async_sessionmaker(engine)() as session:
        return await session.scalar(select(BotState.value).where(BotState.key == key))


async def set_state(engine: AsyncEngine, key: str, value: str) -> None:
    # One statement: processes starting together may write the same fact at the same moment,
    # and a look-up followed by an insert would fail for all but the first.
    async with engine.begin() as conn:
        await conn.execute(upsert(engine.dialect.name, BotState, {"key": key, "value": value}))
