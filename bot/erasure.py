"""Deleting vectors so that they stay deleted.

A deletion takes the queued jobs it covers in its own transaction, and a job whose row is gone
is never stored (see retrieval/store/deletes.py), so images already in the jobs table (waiting,
downloading, in a batch) are covered. Images read before the deletion but written as rows after
it are not: a burst waiting for its transaction, or a backfill page read before the deletion and
queued after it (backfill waits for room in the queue in between). So a deletion that started
while such images were on their way runs a second time once they have landed
(retrieval/indexing/arrivals.py): a statement more for those, none for the others, and no
polling whatever the load.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from retrieval.backoff import patiently
from retrieval.errors import StoreUnavailable

if TYPE_CHECKING:
    from retrieval.indexing import IndexingPipeline

log = logging.getLogger(__name__)

Delete = Callable[[], Awaitable[int]]


class Eraser:
    def __init__(self, pipeline: IndexingPipeline) -> None:
        self._arrivals = pipeline.arrivals
        self._sweeps: set[asyncio.Task] = set()

    async def erase(
        self, delete: Delete, *, what: str, still: Callable[[], bool] | None = None
    ) -> int:
        """Run ``delete`` now, and once more when the images on their way as it started have
        landed, if ``still()`` holds then (the member is still opted out, say). Returns what the
        first run removed; a database outage is raised, for a command to report."""
        # Asked before the deletion: an arrival landing while it runs may land after its read.
        on_their_way = self._arrivals.open()
        removed = await delete()
        if on_their_way:
            self._track(
                asyncio.create_task(
                    self._again(delete, what, still, after=on_their_way), name=f"sweep {what}"
                )
            )
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

    def erase_when_back(
        self, delete: Delete, *, what: str, still: Callable[[], bool] | None = None
    ) -> None:
        """A deletion a command could not make because the database is away: made here as soon
        as it is back, without waiting for anyone to ask again. Should this process stop first,
        the policy sweep at the next start deletes what the recorded wish forbids."""
        retry = functools.partial(self.erase_patiently, delete, what=what, still=still)
        self._track(asyncio.create_task(self._when_back(retry, what), name=f"erase {what}"))

    async def _when_back(self, retry: Callable[[], Awaitable[int]], what: str) -> None:
        try:
            removed = await retry()
        except StoreUnavailable as exc:  # a refusal: waiting will not cure it
            log.error("could not delete %s: %s", what, exc)
            return
        log.info("deleted %d images of %s once the database was back", removed, what)

    def _track(self, task: asyncio.Task) -> None:
        self._sweeps.add(task)
        task.add_done_callback(self._sweeps.discard)

    async def _again(
        self,
        delete: Delete,
        what: str,
        still: Callable[[], bool] | None,
        *,
        after: list[asyncio.Future[None]],
    ) -> None:
        await asyncio.wait(after)
        if still is not None and not still():
            return
        try:
            late = await delete()
        except StoreUnavailable as exc:
            log.warning("could not re-check the deletion of %s: %s", what, exc)
            return
        if late:
            log.info("removed %d images of %s that were indexed as it was deleted", late, what)

    async def idle(self) -> None:
        """Wait until the second runs started so far are done."""
        await asyncio.gather(*self._sweeps, return_exceptions=True)

    def close(self) -> None:
        for sweep in self._sweeps:
            sweep.cancel()
