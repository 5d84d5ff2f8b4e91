"""Small key/value facts kept between runs (the bot_state table)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from retrieval.models import BotState


async def get_state(engine: AsyncEngine, key: str) -> str | None:
    async with async_sessionmaker(engine)() as session:
        return await session.scalar(select(BotState.value).where(BotState.key == key))


async def set_state(engine: AsyncEngine, key: str, value: str) -> None:
    async with async_sessionmaker(engine).begin() as session:
        await session.merge(BotState(key=key, value=value))
