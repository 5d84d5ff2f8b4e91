"""Writing submitted images as job rows: callers wait until their rows are durable, and every
caller waiting at the same moment shares one transaction (a burst of gateway events costs a
handful of commits, not one each)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence

from retrieval.backoff import patiently
from retrieval.errors import StoreUnavailable
from retrieval.indexing.jobs import ImageRef, JobQueue

log = logging.getLogger(__name__)


Start = Callable[[str, Callable[[], Awaitable[object]]], asyncio.Task]


def _unsupervised(name: str, run: Callable[[], Awaitable[object]]) -> asyncio.Task:
    return asyncio.create_task(run(), name=name)


class Submissions:
    """``start`` runs the flusher as a task (the process's supervisor restarts it should it
    fail)."""

    def __init__(
        self, jobs: JobQueue, *, written: Callable[[], None], start: Start = _unsupervised
    ) -> None:
        self._jobs = jobs
        self._written = written
        self._start = start
        self._pending: list[tuple[Sequence[ImageRef], int, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task | None = None

    async def write(self, refs: Sequence[ImageRef], priority: int) -> None:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((refs, priority, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = self._start("clip-submit", self._flush)
        await asyncio.shield(future)

    async def flushed(self) -> None:
        """Wait until everything submitted so far is written."""
        if self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        while self._pending:
            batch: list[tuple[Sequence[ImageRef], int, asyncio.Future[None]]] = []

            def waiting(exc: StoreUnavailable, delay: float, batch=batch) -> None:
                # Nothing is lost while the process lives: the callers are still waiting.
                n = sum(len(refs) for refs, _, _ in batch)
                log.error("database unavailable, cannot queue %d images yet: %s", n, exc)

            try:
                await patiently(functools.partial(self._write, batch), waiting=waiting)
            except Exception as exc:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, _, future in batch:
                if not future.done():
                    future.set_result(None)
            self._written()

    async def _write(self, batch: list) -> None:
        # What was submitted while the database was down joins the next try: one transaction.
        batch += self._pending
        self._pending = []
        refs = [ref for part, _, _ in batch for ref in part]
        priorities = [priority for part, priority, _ in batch for _ in part]
        await self._jobs.enqueue(refs, priority=priorities)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
