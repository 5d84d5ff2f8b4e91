"""Deleting vectors so that they stay deleted.

Images already in the pipeline when a deletion comes (queued, downloading, in a batch) could be
written after it. The pipeline itself drops those of deleted messages, excluded channels and
opted-out members just before writing; for what it cannot know (a deleted channel's threads, a
purged server), every deletion also runs twice: now, and again once the pipeline has drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from retrieval.errors import StoreUnavailable

if TYPE_CHECKING:
    from retrieval.indexing import IndexingPipeline

log = logging.getLogger(__name__)

# Under a sustained flood the pipeline may never be idle; by then the images that were in
# flight at the deletion are long written, so sweep anyway.
DRAIN_PATIENCE_S = 600.0
_RETRY_FIRST_S, _RETRY_MAX_S = 0.5, 30.0

Delete = Callable[[], Awaitable[int]]


class Eraser:
    def __init__(self, pipeline: IndexingPipeline) -> None:
        self._pipeline = pipeline
        self._sweeps: set[asyncio.Task] = set()

    async def erase(
        self, delete: Delete, *, what: str, still: Callable[[], bool] | None = None
    ) -> int:
        """Run ``delete`` now, and once more after the pipeline drains if ``still()`` holds then
        (the member is still opted out, say). Returns what the first run removed; a database
        outage is raised, for a command to report."""
        removed = await delete()
        sweep = asyncio.create_task(self._again(delete, what, still), name=f"sweep {what}")
        self._sweeps.add(sweep)
        sweep.add_done_callback(self._sweeps.discard)
        return removed

    async def erase_patiently(
        self, delete: Delete, *, what: str, still: Callable[[], bool] | None = None
    ) -> int:
        """The same for Discord events, which come once: a database outage is waited out."""
        delay = _RETRY_FIRST_S
        while True:
            try:
                return await self.erase(delete, what=what, still=still)
            except StoreUnavailable as exc:
                log.error("could not delete %s, retrying in %.1fs: %s", what, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)

    async def _again(self, delete: Delete, what: str, still: Callable[[], bool] | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._pipeline.join(), DRAIN_PATIENCE_S)
        if still is not None and not still():
            return
        try:
            late = await delete()
        except StoreUnavailable as exc:
            log.warning("could not re-check the deletion of %s: %s", what, exc)
            return
        if late:
            log.info("removed %d images of %s that were indexed as it was deleted", late, what)

    def close(self) -> None:
        for sweep in self._sweeps:
            sweep.cancel()
