"""Deleting vectors so that they stay deleted.

A deletion takes the queued jobs it covers in its own transaction, and a job whose row is gone
is never stored (see retrieval/store/deletes.py), so images already in the jobs table (waiting,
downloading, in a batch) are covered. Images submitted before the deletion but written as rows
after it are not: a burst waiting for its transaction, or a backfill page read before the
deletion and queued after it (backfill waits for room in the queue in between). So every
deletion also runs a second time, once the pipeline has drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from retrieval.errors import StoreUnavailable
from retrieval.patience import patiently

if TYPE_CHECKING:
    from retrieval.indexing import IndexingPipeline

log = logging.getLogger(__name__)

# Under a sustained flood the pipeline may never be idle; by then the images that were in
# flight at the deletion are long written, so sweep anyway.
DRAIN_PATIENCE_S = 600.0

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

        def waiting(exc: StoreUnavailable, delay: float) -> None:
            log.error("could not delete %s, retrying in %.1fs: %s", what, delay, exc)

        return await patiently(
            functools.partial(self.erase, delete, what=what, still=still), waiting=waiting
        )

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
