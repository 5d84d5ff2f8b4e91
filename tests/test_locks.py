"""Cluster-wide advisory locks on PostgreSQL; free on SQLite (one process only)."""

from __future__ import annotations

import asyncio

import pytest

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
