"""A statement the database refuses is told apart from a database that is away: both keep the
work (the caller waits and tries again), but the operator's log must not call a refusal an
outage."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from retrieval.db import create_engine
from retrieval.errors import StoreUnavailable
from retrieval.store.reads import database_errors


async def test_a_refused_statement_carries_its_sqlstate(postgres_engine):
    async with postgres_engine.connect() as conn:
        with pytest.raises(StoreUnavailable) as missing, database_errors():
            await conn.execute(text("SELECT * FROM no_such_table"))
    assert missing.value.refused == "42P01"
    assert "refused the statement (SQLSTATE 42P01)" in str(missing.value)
    assert "no_such_table" in str(missing.value)


async def test_a_database_that_is_away_is_an_outage(tmp_path):
    engine = create_engine("postgresql+asyncpg://clipfind@127.0.0.1:9/clipfind")  # discard port
    try:
        with pytest.raises(StoreUnavailable) as away, database_errors():
            async with engine.connect():
                pass
    finally:
        await engine.dispose()
    assert away.value.refused is None
    assert str(away.value).startswith("database error: ")


async def test_a_lock_that_is_not_available_is_an_outage(postgres_engine):
    async with postgres_engine.connect() as holder, postgres_engine.connect() as waiter:
        await holder.execute(text("LOCK TABLE bot_state IN ACCESS EXCLUSIVE MODE"))
        await waiter.execute(text("SET LOCAL lock_timeout = '50ms'"))
        with pytest.raises(StoreUnavailable) as busy, database_errors():
            await waiter.execute(text("SELECT * FROM bot_state"))
        assert busy.value.refused is None


async def test_no_free_connection_in_the_pool_is_an_outage(database_url):
    """A pool whose connections are all busy (a long lock, a VACUUM FULL) is waited out like
    a database that is away, never taken for a bug."""
    engine = create_engine(database_url, pool_max=1, pool_timeout_s=0.05)
    try:
        async with engine.connect() as busy:
            await busy.execute(text("SELECT 1"))
            with pytest.raises(StoreUnavailable) as full, database_errors():
                async with engine.connect():
                    pass
    finally:
        await engine.dispose()
    assert full.value.refused is None
    assert "QueuePool limit of size 1 overflow 0 reached" in str(full.value)
