"""Revision 0009: a server's rows by date (``ix_images_guild_model_posted``) replace the
(guild_id, model_id) index, built and dropped on PostgreSQL without holding writes."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import inspect, text

from retrieval.database.engine import current_revision, downgrade, upgrade

DATED, UNDATED = "ix_images_guild_model_posted", "ix_images_guild_model"
_INSERT = (
    "INSERT INTO images (guild_id, channel_id, message_id, image_key, kind, author_id, "
    "posted_at, filename, source_url, content_type, content_hash, model_id, embedding) "
    "VALUES (1, 10, {m}, 1, 'attachment', 70, '2026-01-01 00:00:00', 'f.png', "
    "'https://cdn.example/f.png', 'image/png', 'h', 'm', CAST('[1,0,0,0]' AS vector))"
)
# The upgrade's CREATE INDEX started (waiting or building).
_BUILDING = text(
    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'CREATE INDEX%'"
)
_VALID = text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:n)")


async def _write(engine, message_id: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(_INSERT.format(m=message_id)))


async def _indexes(engine) -> dict[str, list[str]]:
    async with engine.connect() as conn:
        found = await conn.run_sync(lambda sync: inspect(sync).get_indexes("images"))
    return {i["name"]: i["column_names"] for i in found if i["name"] in (DATED, UNDATED)}


async def test_upgrade_and_downgrade_swap_the_indexes(store_engine):
    assert await _indexes(store_engine) == {DATED: ["guild_id", "model_id", "posted_at"]}
    await downgrade(store_engine, "0007")
    assert await _indexes(store_engine) == {UNDATED: ["guild_id", "model_id"]}
    await upgrade(store_engine)
    assert await _indexes(store_engine) == {DATED: ["guild_id", "model_id", "posted_at"]}


async def test_the_upgrade_lets_writes_through_while_it_waits(postgres_engine):
    """An open transaction that wrote to the table makes any index build wait for it. A plain
    CREATE INDEX waits holding a lock request that queues every later write behind it; the
    concurrent build waits without blocking them."""
    await downgrade(postgres_engine, "0007")
    async with postgres_engine.connect() as long_running:
        await long_running.execute(text(_INSERT.format(m=1)))  # uncommitted for now
        upgrading = asyncio.create_task(upgrade(postgres_engine))
        async with postgres_engine.connect() as conn:
            while not await conn.scalar(_BUILDING):
                await conn.rollback()
                assert not upgrading.done(), upgrading.result()
                await asyncio.sleep(0.01)
        writing = asyncio.create_task(_write(postgres_engine, 2))
        done, _ = await asyncio.wait({writing}, timeout=3)
        assert not upgrading.done()  # still waiting for the long transaction
        await long_running.commit()
    await asyncio.wait_for(writing, timeout=10)
    assert done, "a write waited for the upgrade's index build"
    await asyncio.wait_for(upgrading, timeout=10)
    assert await _indexes(postgres_engine) == {DATED: ["guild_id", "model_id", "posted_at"]}
    async with postgres_engine.connect() as conn:
        assert await conn.scalar(_VALID, {"n": DATED}) is True
        assert await conn.scalar(text("SELECT count(*) FROM images")) == 2


async def test_an_invalid_leftover_of_a_failed_build_is_built_again(postgres_engine):
    await downgrade(postgres_engine, "0007")
    async with postgres_engine.connect() as long_running:
        await long_running.execute(text(_INSERT.format(m=1)))
        async with postgres_engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            # A concurrent build that gives up waiting for the open transaction leaves its
            # index behind, INVALID: what an upgrade cancelled or timed out leaves.
            await conn.execute(text("SET statement_timeout = '200ms'"))
            with pytest.raises(Exception, match="statement timeout"):
                await conn.execute(
                    text(f"CREATE INDEX CONCURRENTLY {DATED} ON images (guild_id, model_id)")
                )
            await conn.execute(text("RESET statement_timeout"))
            assert await conn.scalar(_VALID, {"n": DATED}) is False
        await long_running.commit()
    await upgrade(postgres_engine)
    async with postgres_engine.connect() as conn:
        assert await conn.scalar(_VALID, {"n": DATED}) is True
    assert await _indexes(postgres_engine) == {DATED: ["guild_id", "model_id", "posted_at"]}
    assert await current_revision(postgres_engine) is not None
