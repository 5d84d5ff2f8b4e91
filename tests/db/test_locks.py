"""Cluster-wide advisory locks on PostgreSQL; free on SQLite (one process only)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from retrieval.database.engine import create_engine
from retrieval.database.locks import AdvisoryLock, Purpose, held


async def test_one_holder_at_a_time_per_key(postgres_engine):
    # A second engine stands for a second process: its own pool, its own sessions.
    other = create_engine(postgres_engine.url.render_as_string(hide_password=False))
    try:
        first = AdvisoryLock(postgres_engine, purpose=Purpose.IDENTIFY, key=0)
        await first.acquire()
        second = AdvisoryLock(other, purpose=Purpose.IDENTIFY, key=0)
        waiting = asyncio.create_task(second.acquire())
        # Another key, or another purpose with the same number, is not blocked.
        async with held(other, purpose=Purpose.IDENTIFY, key=1):
            pass
        async with held(other, purpose=Purpose.COMMAND_SYNC, key=0):
            pass
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await first.release()
        await asyncio.wait_for(waiting, 5)
        await second.release()
    finally:
        await other.dispose()


async def test_released_locks_free_the_key_for_another_process(postgres_engine):
    other = create_engine(postgres_engine.url.render_as_string(hide_password=False))
    try:
        for _ in range(3):  # the pooled connection goes back without the lock each time
            async with held(postgres_engine, purpose=Purpose.COMMAND_SYNC):
                pass
            # Locks are re-entrant within one session, so only another one shows it is free.
            async with asyncio.timeout(2), held(other, purpose=Purpose.COMMAND_SYNC):
                pass
        lock = AdvisoryLock(postgres_engine, purpose=Purpose.COMMAND_SYNC)
        await lock.acquire()
        await lock.release()
        await lock.release()  # twice is harmless
    finally:
        await other.dispose()
    with pytest.raises(ValueError, match="out of range"):
        AdvisoryLock(postgres_engine, purpose=Purpose.IDENTIFY, key=1 << 16)


async def test_free_on_sqlite(sqlite_engine):
    # SQLite has no advisory locks: asking it for one would fail.
    async with held(sqlite_engine, purpose=Purpose.COMMAND_SYNC):
        pass


async def test_a_lock_whose_session_the_server_ended_is_released_without_an_error(
    postgres_engine, caplog
):
    """PostgreSQL restarted (or the session killed) while a lock was held: the session took the
    lock with it, so releasing it is done, not an error for the holder to crash on (an IDENTIFY
    turn released after a restart used to raise out of the bot's stop)."""
    other = create_engine(postgres_engine.url.render_as_string(hide_password=False))
    try:
        lock = AdvisoryLock(postgres_engine, purpose=Purpose.IDENTIFY, key=3)
        await lock.acquire()
        async with other.connect() as conn:
            ended = await conn.scalar(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND objid = :key"
                ),
                {"key": (int(Purpose.IDENTIFY) << 16) | 3},
            )
        assert ended
        await lock.release()
        async with asyncio.timeout(2), held(other, purpose=Purpose.IDENTIFY, key=3):
            pass
        assert "could not release" in caplog.text
    finally:
        await other.dispose()
