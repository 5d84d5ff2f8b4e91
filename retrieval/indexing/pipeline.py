"""The indexing pipeline: the jobs table → fetch → decode (thread pool) → micro-batch → encode →
store, with each vector stored in the transaction that deletes its job.

``submit`` writes images as job rows and returns once they are durable (many callers share one
transaction, `submit.py`). A feeder claims due rows into a small in-memory window
(`window.py`), so memory stays bounded however large the backlog. Fetch workers download and
decode (`fetching.py`), the batcher encodes (`batching.py`), and each job ends stored, retried
later or failed for good (`outcomes.py`). CPU work never runs on the event loop: hashing and
decoding go to a thread pool, the model to the encoder's threads (one per stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from retrieval.encoding.service import EncoderService
from retrieval.indexing.arrivals import Arrivals
from retrieval.indexing.batching import Batching
from retrieval.indexing.downloads import Downloads
from retrieval.indexing.fetching import Fetching, Prepared
from retrieval.indexing.jobs import LIVE, ImageRef, JobQueue
from retrieval.indexing.outcomes import Outcomes, PipelineCounters
from retrieval.indexing.resized import ResizingFetcher
from retrieval.indexing.reuse import ReuseLookups
from retrieval.indexing.signed_urls import RefreshUrls, SignedUrls
from retrieval.indexing.submit import Submissions
from retrieval.indexing.waves import RetryWaves
from retrieval.indexing.window import BATCH, FETCH, GIVE_BACK_S, Window
from retrieval.pictures.fetch import Fetcher
from retrieval.pictures.images import PreprocessSpec
from retrieval.store.base import VectorStore
from retrieval.supervisor import Supervisor, settle, within
from retrieval.torch_threads import use_torch_threads

log = logging.getLogger(__name__)

# What a cancelled task is given to end, however little of the deadline is left.
_SETTLE_S = 0.2


class IndexingPipeline:
    def __init__(
        self,
        *,
        fetcher: Fetcher,
        encoder: EncoderService,
        store: VectorStore,
        jobs: JobQueue,
        spec: PreprocessSpec,
        max_pixels: int,
        batch_size: int,
        batch_deadline_s: float,
        queue_size: int = 256,
        fetch_workers: int = 8,
        decode_threads: int | None = None,
        consume: bool = True,
        refresh: RefreshUrls | None = None,
        supervisor: Supervisor | None = None,
        fetch_resized: bool = True,
    ) -> None:
        self.fetcher = fetcher
        self.encoder = encoder
        self.jobs = jobs
        self.spec = spec
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        self.batch_deadline_s = batch_deadline_s
        self.counters = PipelineCounters()
        self.window = queue_size
        self.supervisor = supervisor or Supervisor()
        # False: this process only queues images; other processes (workers) take them.
        self.consumes = consume
        # Images read from Discord and not yet rows: what a deletion cannot reach yet. Callers
        # that read before they submit (backfill) carry theirs from the first read.
        self.arrivals = Arrivals()
        # ``refresh`` is the Discord adapter's; without it URLs are used as queued.
        self.signed_urls = SignedUrls(refresh)
        self._closing = False
        self._tasks: list[asyncio.Task] = []
        self._fetch_workers = fetch_workers
        # By default one core is left to the model: on 2 cores, decoding on both slowed encoding.
        threads = decode_threads or max(1, (os.cpu_count() or 2) - 1)
        # One torch thread each for the resize, as PyTorch's DataLoader sets for its workers:
        # they are one per core already. With torch's default (every core, where no stream set
        # another) the 15 of a 16-core GPU machine would run up to 240 against its 16 cores.
        self._pool = ThreadPoolExecutor(
            threads,
            thread_name_prefix="clip-decode",
            initializer=functools.partial(use_torch_threads, 1),
        )
        waves = RetryWaves(jobs)
        self._window = Window(
            jobs,
            size=queue_size,
            refill=max(1, min(batch_size, queue_size // 2)),
            supervisor=self.supervisor,
            signed_urls=self.signed_urls,
            waves=waves,
        )
        self._submissions = Submissions(
            jobs, written=self._window.rows_written, start=self.supervisor.start
        )
        self._outcomes = Outcomes(
            window=self._window,
            store=store,
            jobs=jobs,
            counters=self.counters,
            waves=waves,
            closing=lambda: self._closing,
        )
        prepared: asyncio.Queue[Prepared] = asyncio.Queue(maxsize=batch_size * 2)
        self._fetching = Fetching(
            window=self._window,
            downloads=Downloads(
                window=self._window,
                fetcher=fetcher,
                signed_urls=self.signed_urls,
                resizing=ResizingFetcher(
                    fetcher, spec=spec, counters=self.counters, resized=fetch_resized
                ),
            ),
            reuse=ReuseLookups(store, encoder.model_id),
            outcomes=self._outcomes,
            counters=self.counters,
            spec=spec,
            max_pixels=max_pixels,
            encoder=encoder,
            pool=self._pool,
            prepared=prepared,
        )
        self._batching = Batching(
            window=self._window,
            encoder=encoder,
            outcomes=self._outcomes,
            counters=self.counters,
            prepared=prepared,
            batch_size=batch_size,
            deadline_s=batch_deadline_s,
        )

    @property
    def store(self) -> VectorStore:
        """Where vectors are written."""
        return self._outcomes.store

    @property
    def model_id(self) -> str:
        return self.encoder.model_id

    @property
    def queued(self) -> int:
        """Images in this process's window (claimed, not finished)."""
        return len(self._window)

    async def start(self) -> None:
        if not self.consumes:
            return
        start = self.supervisor.start
        self._tasks = [start(FETCH, self._fetching.loop) for _ in range(self._fetch_workers)]
        self._tasks.append(start(BATCH, self._batching.loop))
        self._tasks.append(start("clip-feed", self._window.feed_loop))
        self._tasks.append(start("clip-lease", self._window.renew_loop))

    async def close(self, *, deadline_s: float = 10.0) -> None:
        """Stop taking work; let the batches being encoded finish, and hand every other claimed
        job back to the table for the next consumer, all within ``deadline_s``."""
        self._closing = True
        deadline = time.monotonic() + deadline_s

        def left() -> float:  # what is left after it is for handing the rest back
            return max(deadline - time.monotonic() - GIVE_BACK_S, _SETTLE_S)

        def step(what: str) -> None:
            log.debug("stopping the pipeline: %s, %.1fs left", what, deadline - time.monotonic())

        step("started")
        await settle(self._tasks, within_s=left())
        self._tasks.clear()
        step("tasks settled")
        await self._batching.settle(left)
        step("batches settled")
        with contextlib.suppress(TimeoutError):
            await within(self._submissions.close(), seconds=left())
        await self.signed_urls.close()
        step("handing back")
        await self._window.give_back_all(deadline=deadline)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def wake(self) -> None:
        """Look at the table now: another process queued work."""
        self._window.rows_written()

    async def submit(self, refs: Sequence[ImageRef], *, priority: int = LIVE) -> None:
        """Queue images durably: returns once they are rows in the jobs table (or counted as
        failed, those that cannot be stored: see `JobQueue.enqueue`)."""
        if not refs:
            return
        self.counters.submitted += len(refs)
        with self.arrivals.carrying():
            await self._submissions.write(refs, priority)

    async def join(self) -> None:
        """Wait until nothing is due: every job that can be done now is done (jobs waiting to be
        retried later do not count). Without a consumer here, that waits for other processes:
        until no due job is left, claimed or not."""
        window, with_store = self._window, self._outcomes.with_store
        while True:
            await self._submissions.flushed()
            if not self.consumes:
                if not await with_store(self.jobs.unfinished, 1):
                    return
            elif await window.drained(functools.partial(with_store, self.jobs.due, 1)):
                return
            await asyncio.sleep(0.05)
