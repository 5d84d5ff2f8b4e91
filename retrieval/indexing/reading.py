"""The OCR lane: the words inside pictures, read once no vector waits.

Its jobs are rows of the same table as the CLIP lane's (``lane = 'ocr'``), queued with them
(`JobQueue.enqueue`, when reading is on) and under every promise of the queue: leases renewed
while held and handed back at a stop, retries with backoff for what may pass (the CDN), a count
per reason for what will not, deleted with their image's message, channel, server or author.

A reading is claimed only when no CLIP job is due, in this process or any other: OCR is far
heavier than a CLIP encode on a CPU, and a picture must become searchable by CLIP as fast as
without it. And only once its image's own CLIP job is gone (`JobQueue._after_vector`): the words
are kept in the image's row. An image no longer stored (deleted, or its vector failed for good)
has nothing to read for; the words of the same bytes read before in the server are copied, not
read again. The OCR engine runs in its own thread, never on the event loop, at a lower scheduling
priority than the rest of the process (`NICER`); reading one picture takes about a second of one
core.

The text is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from retrieval.encoding.ocr import OcrEngine, PictureText
from retrieval.indexing.downloads import Downloads
from retrieval.indexing.jobs import Job, JobQueue
from retrieval.indexing.outcomes import Outcomes, PipelineCounters
from retrieval.indexing.signed_urls import SignedUrls
from retrieval.indexing.waves import RetryWaves
from retrieval.indexing.window import GIVE_BACK_S, Window
from retrieval.pictures.fetch import Fetcher
from retrieval.store.base import VectorStore
from retrieval.store.words import PictureWords
from retrieval.supervisor import Supervisor, settle

log = logging.getLogger(__name__)

READ = "ocr-read"  # the task that reads; the window's jobs are queued for it
# Readings held at once: one is read while the next downloads.
WINDOW = 2


# How much lower the reading thread's scheduling priority is than the process's (Linux nice
# levels): a reading already running when images arrive must not slow their vectors. Measured
# with benchmarks/reading_lane.py (benchmarks/RESULTS.md).
NICER = 10


def _yield_the_cpu() -> None:
    """Lower the calling thread's priority (Linux keeps one per thread); elsewhere, or where the
    system refuses, the thread keeps the process's."""
    with contextlib.suppress(AttributeError, OSError):
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + NICER)


class ReadingWindow(Window):
    """The OCR lane's window: it claims only while the CLIP lane has nothing due."""

    def __init__(
        self, jobs: JobQueue, *, clip: JobQueue, clip_held: Callable[[], int], **kwargs
    ) -> None:
        super().__init__(jobs, **kwargs)
        self._clip = clip
        self._clip_held = clip_held

    async def vectors_waiting(self) -> bool:
        """Whether a CLIP job is held by this process or due in the table (any process's)."""
        return bool(self._clip_held()) or bool(await self._clip.due(1))

    async def _claim(self, room: int) -> list[Job]:
        if await self.vectors_waiting():
            return []  # the vectors first; the next poll looks again
        return await super()._claim(room)


class ReadingLane:
    def __init__(
        self,
        *,
        jobs: JobQueue,
        clip_jobs: JobQueue,
        clip_held: Callable[[], int] = lambda: 0,
        engine: OcrEngine,
        fetcher: Fetcher,
        store: VectorStore,
        signed_urls: SignedUrls,
        max_pixels: int,
        max_bytes: int | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.jobs = jobs
        self.engine = engine
        self.counters = PipelineCounters()  # indexed: words stored; reused: copied
        self.supervisor = supervisor or Supervisor()
        self._max_pixels = max_pixels
        self._max_bytes = max_bytes
        self._closing = False
        self._tasks: list[asyncio.Task] = []
        # One thread owns the engine, as one owns the CLIP model.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="clip-ocr")
        waves = RetryWaves(jobs)
        self._window = ReadingWindow(
            jobs,
            clip=clip_jobs,
            clip_held=clip_held,
            size=WINDOW,
            refill=1,
            tasks=(READ,),
            supervisor=self.supervisor,
            signed_urls=signed_urls,
            waves=waves,
        )
        self._downloads = Downloads(window=self._window, fetcher=fetcher, signed_urls=signed_urls)
        self._outcomes = Outcomes(
            window=self._window,
            store=store,
            jobs=jobs,
            counters=self.counters,
            waves=waves,
            closing=lambda: self._closing,
        )

    @property
    def store(self) -> VectorStore:
        return self._outcomes.store

    @property
    def held(self) -> int:
        return len(self._window)

    async def vectors_waiting(self) -> bool:
        """Whether the lane holds back because a CLIP job waits (see `ReadingWindow`)."""
        return await self._window.vectors_waiting()

    async def start(self) -> None:
        """Load the models (in the lane's thread) and start taking readings."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, _yield_the_cpu)
        await loop.run_in_executor(self._pool, self.engine.load)
        start = self.supervisor.start
        self._tasks = [
            start(READ, self._loop),
            start("ocr-feed", self._window.feed_loop),
            start("ocr-lease", self._window.renew_loop),
        ]

    def wake(self) -> None:
        self._window.rows_written()

    async def close(self, *, deadline_s: float = 10.0) -> None:
        """Stop reading; the readings held go back to the table for the next consumer."""
        self._closing = True
        deadline = time.monotonic() + deadline_s
        await settle(self._tasks, within_s=max(deadline_s - GIVE_BACK_S, 0.2))
        self._tasks.clear()
        await self._window.give_back_all(deadline=deadline)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _loop(self) -> None:
        window = self._window
        while True:
            job = await window.intake.get()
            window.taken(job.id)
            try:
                await self._job(job)
            except Exception:  # this task fails: its job goes back for the next try
                await window.give_back([job.id])
                raise

    async def _job(self, job: Job) -> None:
        finished = True
        try:
            await self._read(job)
        except asyncio.CancelledError:
            finished = False  # stopping: close() hands it back
            raise
        except Exception as exc:  # a bug must not end the lane: see Outcomes.failed_by
            await self._outcomes.failed_by(job, exc, doing="reading")
        finally:
            if finished:
                self._window.finished([job])

    async def _read(self, job: Job) -> None:
        ref, store = job.ref, self.store
        with_store = self._outcomes.with_store
        source = await with_store(
            functools.partial(
                store.words_source,
                guild_id=ref.guild_id,
                message_id=ref.message_id,
                image_key=ref.image_key,
                model=self.engine.model_id,
            )
        )
        if not source.stored:  # deleted, or its vector failed for good: nothing to read for
            await with_store(self.jobs.done, [job.id])
            self.counters.discarded += 1
            return
        if source.known is not None:
            words = source.known
        else:
            data = await self._downloads.bytes_of(job)
            read = functools.partial(
                self.engine.read_bytes, data, max_pixels=self._max_pixels, max_bytes=self._max_bytes
            )
            text: PictureText = await asyncio.get_running_loop().run_in_executor(self._pool, read)
            del data, read
            confidences = [line.confidence for line in text.lines]
            words = PictureWords(
                guild_id=ref.guild_id,
                message_id=ref.message_id,
                image_key=ref.image_key,
                words=text.text,
                model=text.model_id,
                confidence=min(confidences) if confidences else None,
            )
        await with_store(store.store_words, [words])
        await with_store(self.jobs.done, [job.id])
        # Counted once stored: what the counters say is searchable.
        if source.known is not None:
            self.counters.reused += 1
        else:
            self.counters.indexed += 1

    async def join(self) -> None:
        """Wait until no reading is due or held (tests; a stop)."""
        due = functools.partial(self._outcomes.with_store, self.jobs.due, 1)
        while True:
            if await self._window.drained(due):
                return
            await asyncio.sleep(0.05)
