"""A statement the database refuses is told apart from a database that is away: an outage is
waited out with the work kept, a refusal is never retried as it was (see
retrieval/database/refusals.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from retrieval.database.engine import create_engine
from retrieval.database.errors import database_errors
from retrieval.errors import StoreUnavailable
from retrieval.store import open_store
from tests.records import image_record as record


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


async def test_a_row_postgresql_refuses_in_a_bulk_copy_is_a_refusal(postgres_engine):
    """A batch large enough to be copied in binary reaches the server through the driver's own
    connection: its refusal is told apart all the same."""
    store = open_store(postgres_engine)
    vector = np.ones(8, dtype=np.float32) / 8**0.5
    batch = [record(i, vector) for i in range(9)] + [record(9, vector, filename="a\x00.png")]
    try:
        with pytest.raises(StoreUnavailable) as refused:
            await store.upsert(batch)
    finally:
        await store.close()
    assert refused.value.refused == "22021"


async def test_what_sqlite_and_its_driver_refuse_is_a_refusal(sqlite_engine):
    async with sqlite_engine.connect() as conn:
        with pytest.raises(StoreUnavailable) as null, database_errors():
            await conn.execute(text("INSERT INTO bot_state (key, value) VALUES ('k', NULL)"))
        with pytest.raises(StoreUnavailable) as surrogate, database_errors():
            await conn.execute(text("SELECT :v"), {"v": "a\ud800"})
        with pytest.raises(StoreUnavailable) as too_large, database_errors():
            await conn.execute(text("SELECT :v"), {"v": 2**64})
    assert null.value.refused == "SQLITE_CONSTRAINT_NOTNULL"
    assert surrogate.value.refused == "UnicodeEncodeError"
    assert too_large.value.refused == "OverflowError"


async def test_a_busy_sqlite_database_is_an_outage(tmp_path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/busy.db")
    other = create_async_engine(
        f"sqlite+aiosqlite:///{tmp_path}/busy.db", connect_args={"timeout": 0}
    )
    try:
        async with engine.begin() as holder:
            await holder.execute(text("CREATE TABLE t (x INTEGER)"))
            await holder.execute(text("INSERT INTO t VALUES (1)"))
            with pytest.raises(StoreUnavailable) as busy, database_errors():
                async with other.begin() as conn:
                    await conn.execute(text("INSERT INTO t VALUES (2)"))
    finally:
        await other.dispose()
        await engine.dispose()
    assert busy.value.refused is None


def test_an_error_of_the_callers_own_is_neither():
    """A bug in the code inside a transaction is not the database's refusal: it stays itself,
    and is not recorded as a row the database refused."""
    with pytest.raises(ValueError, match="zip"), database_errors():
        raise ValueError("zip() argument 2 is shorter than argument 1")
