"""IDENTIFY pacing across processes, by Discord's `max_concurrency` buckets.

Discord accepts `max_concurrency` IDENTIFYs per 5 s, one per bucket `shard_id % max_concurrency`;
more and the session start is refused. discord.py paces the shards of one process (5 s between
IDENTIFYs); processes sharing one PostgreSQL database take a lock per bucket instead, held from
before an IDENTIFY until the window after it has passed, so a cold start of many processes at
once never goes faster than Discord allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from retrieval.database import AdvisoryLock, Purpose

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

# Discord's window is 5 s as it receives the IDENTIFYs; the margin covers the network between
# the processes and Discord, and the moment between taking the lock and sending.
IDENTIFY_WINDOW_S = 5.5


class IdentifyGate:
    """Before each IDENTIFY: wait for the shard's bucket, and hold it for the window after."""

    def __init__(self, engine: AsyncEngine, *, window_s: float = IDENTIFY_WINDOW_S) -> None:
        self._engine = engine
        self.window_s = window_s
        # Discord's figure from GET /gateway/bot, set before the first shard connects.
        self.max_concurrency = 1
        self._held: dict[asyncio.Task[None], AdvisoryLock] = {}

    def bucket(self, shard_id: int) -> int:
        return shard_id % max(self.max_concurrency, 1)

    async def wait_turn(self, shard_id: int) -> None:
        """Returns once this shard may IDENTIFY; its bucket is held for `window_s` from now."""
        bucket = self.bucket(shard_id)
        lock = AdvisoryLock(self._engine, purpose=Purpose.IDENTIFY, key=bucket)
        try:
            await lock.acquire()
        except Exception as exc:
            # A database hiccup must not keep the shard offline: pace it as one process would.
            log.warning(
                "shard %d: could not take its IDENTIFY turn through the database (%s); "
                "waiting %.1f s instead",
                shard_id,
                exc,
                self.window_s,
            )
            await asyncio.sleep(self.window_s)
            return
        log.debug("shard %d may IDENTIFY (bucket %d of %d)", shard_id, bucket, self.max_concurrency)
        task = asyncio.create_task(self._release_later(lock), name=f"identify-bucket-{bucket}")
        self._held[task] = lock
        task.add_done_callback(lambda done: self._held.pop(done, None))

    async def _release_later(self, lock: AdvisoryLock) -> None:
        try:
            await asyncio.sleep(self.window_s)
        finally:
            await lock.release()

    async def close(self) -> None:
        """Release every bucket still held, at once: a stopping process must not keep the
        others waiting (at worst a start overlapping this stop IDENTIFYs early, and Discord's
        refusal of it is retried by discord.py)."""
        held = dict(self._held)
        for task in held:
            task.cancel()
        for task, lock in held.items():
            with contextlib.suppress(asyncio.CancelledError):
                await task
            # A task cancelled before it ran never reached its `finally`.
            await lock.release()
