"""Cluster-wide locks: PostgreSQL advisory locks, so processes sharing one database take turns.

SQLite serves one process, which needs no lock across processes: there every lock here is free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from enum import IntEnum

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)

# Two-int advisory keys (namespace, key) never meet the one-bigint keys used elsewhere.
NAMESPACE = 0x636C6970  # "clip"


class Purpose(IntEnum):
    """What a lock guards; the high half of its key, so purposes never share a key."""

    IDENTIFY = 1  # the key's low half: the max_concurrency bucket
    COMMAND_SYNC = 2
    INDEX_BUILD = 3  # one HNSW index build at a time across the cluster (store/pgindex.py)
    SCHEMA = 4  # one migration run at a time; readers of a schema behind wait for it (engine.py)


def is_shared(engine: AsyncEngine) -> bool:
    """Whether several processes may use this database at once (PostgreSQL)."""
    return engine.dialect.name == "postgresql"


class AdvisoryLock:
    """A session-level advisory lock, held on a connection of its own until `release()`.

    The connection goes back to the pool only once the lock is released; should the unlock
    fail, the connection is closed instead, which releases the lock on the server.
    """

    def __init__(self, engine: AsyncEngine, *, purpose: Purpose, key: int = 0) -> None:
        if not 0 <= key < 1 << 16:
            raise ValueError(f"lock key {key} out of range")
        self._engine = engine
        self._params = {"ns": NAMESPACE, "key": (int(purpose) << 16) | key}
        self._conn: AsyncConnection | None = None

    async def acquire(self) -> None:
        conn = await self._engine.connect()
        try:
            await conn.execute(text("SELECT pg_advisory_lock(:ns, :key)"), self._params)
            await conn.commit()  # the lock outlives the transaction; the connection sits idle
        except BaseException:
            await _discard(conn)
            raise
        self._conn = conn

    async def try_acquire(self) -> bool:
        """`acquire`, unless another session holds the lock: then False at once."""
        conn = await self._engine.connect()
        try:
            got = await conn.scalar(text("SELECT pg_try_advisory_lock(:ns, :key)"), self._params)
            await conn.commit()
        except BaseException:
            await _discard(conn)
            raise
        if not got:
            await conn.close()
            return False
        self._conn = conn
        return True

    async def release(self) -> None:
        """Give the lock back. Never fails for the database: an unlock that fails (the server
        restarted, the session was ended) closes the session, and the lock goes with it."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await conn.execute(text("SELECT pg_advisory_unlock(:ns, :key)"), self._params)
            await conn.commit()
        except Exception as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("could not release an advisory lock (its session is closed): %s", why)
            await _discard(conn)
            return
        except BaseException:
            await _discard(conn)
            raise
        await conn.close()


async def _discard(conn: AsyncConnection) -> None:
    """Close the server session itself, and with it any lock it holds."""
    try:
        await conn.invalidate()
    except Exception:
        log.warning("could not close a database connection holding an advisory lock", exc_info=True)


@contextlib.asynccontextmanager
async def held(
    engine: AsyncEngine, *, purpose: Purpose, key: int = 0, poll_s: float | None = None
) -> AsyncIterator[None]:
    """One process at a time across the cluster; free on SQLite (one process only).

    With ``poll_s`` the turn is waited for by trying again every ``poll_s`` seconds, not in a
    blocked statement: a session blocked in pg_advisory_lock keeps a snapshot open, and a
    CREATE INDEX CONCURRENTLY run while the lock is held would wait for that snapshot forever.
    """
    if not is_shared(engine):
        yield
        return
    lock = AdvisoryLock(engine, purpose=purpose, key=key)
    if poll_s is None:
        await lock.acquire()
    else:
        while not await lock.try_acquire():  # noqa: ASYNC110 (the lock is in another process)
            await asyncio.sleep(poll_s)
    try:
        yield
    finally:
        await lock.release()
