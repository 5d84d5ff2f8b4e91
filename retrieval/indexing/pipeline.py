"""The indexing pipeline: the jobs table → fetch → decode (thread pool) → micro-batch → encode →
store, with each vector stored in the transaction that deletes its job.

``submit`` writes images as job rows and returns once they are durable (many callers share one
transaction). A feeder claims due rows into a small in-memory window, so memory stays bounded
however large the backlog. A transient failure (timeouts, 5xx, 429, connection resets, encoder
errors) hands the job back with a later ``retry_at``; a permanent one (not an image, too large,
gone from Discord) drops it and counts the reason per server. CPU work never runs on the event
loop: hashing and decoding go to a thread pool, the model to the encoder's own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np

from retrieval.backoff import patiently
from retrieval.database.refusals import isolating, refusal_reason
from retrieval.encoding.service import EncoderService
from retrieval.errors import ClipfindError, FetchError, ModelSwitched, StoreUnavailable
from retrieval.indexing.arrivals import Arrivals
from retrieval.indexing.inputs import NON_FINITE, finite
from retrieval.indexing.jobs import LIVE, ImageRef, Job, JobQueue
from retrieval.indexing.reuse import ReuseLookups
from retrieval.indexing.signed_urls import RefreshUrls, SignedUrls
from retrieval.indexing.submit import Submissions
from retrieval.indexing.waves import RetryWaves
from retrieval.pictures.fetch import Fetcher
from retrieval.pictures.images import (
    ImageError,
    NotAnImage,
    PreprocessSpec,
    prepare,
    sniff_image_type,
)
from retrieval.store.base import ImageRecord, VectorStore
from retrieval.supervisor import Supervisor, settle

log = logging.getLogger(__name__)

# While one batch encodes the next is formed and waits at the encoder, and the first one's write
# overlaps the next encode: the model does not idle on the store (benchmarks/RESULTS.md).
_BATCHES_IN_FLIGHT = 2
# Rows due later (retries) or leased by a consumer that died are looked for this often when
# nothing wakes the feeder sooner.
_FEED_POLL_S = 1.0
# What a signed attachment URL answers once it has expired (or was re-signed).
_EXPIRED_LINK = frozenset({"http_403", "http_404"})
# The most a stop, or a task that failed, waits to hand jobs back: with the database away, their
# leases bring them back instead (a connection attempt alone can take a minute).
_GIVE_BACK_S = 1.5
# ... and at least this, however little of the deadline is left: a job handed back is taken at
# once by the next consumer, one left to its lease waits JOB_LEASE_S.
_GIVE_BACK_FLOOR_S = 0.5
# What a cancelled task is given to end, however little of the deadline is left.
_SETTLE_S = 0.2
# The tasks that take the jobs waiting in the window's queues: while none of them runs (each
# failed and waits to be started again), those jobs are not renewed for this process.
_FETCH, _BATCH = "clip-fetch", "clip-batch"


@dataclass
class PipelineCounters:
    """This process's work since it started (the jobs table holds every server's backlog)."""

    submitted: int = 0
    indexed: int = 0
    reused: int = 0  # same bytes already encoded: vector copied, model skipped
    discarded: int = 0  # deleted, excluded or opted out while on their way
    retried: int = 0
    in_flight: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def images_per_s(self) -> float:
        elapsed = time.monotonic() - self.started
        return (self.indexed + self.reused) / elapsed if elapsed > 0 else 0.0


@dataclass(slots=True)
class _Prepared:
    job: Job
    content_hash: str
    content_type: str
    pixels: np.ndarray


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
    ) -> None:
        self.fetcher = fetcher
        self.encoder = encoder
        self.store = store
        self.jobs = jobs
        self.spec = spec
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        self.batch_deadline_s = batch_deadline_s
        self.counters = PipelineCounters()
        self.window = queue_size
        self._intake: asyncio.Queue[Job] = asyncio.Queue()
        self._prepared: asyncio.Queue[_Prepared] = asyncio.Queue(maxsize=batch_size * 2)
        self._held: dict[int, Job] = {}  # claimed and not finished: the window onto the table
        # Held jobs waiting in a queue, and the task name that takes them from it.
        self._queued: dict[int, str] = {}
        self._claiming = False
        self._wake = asyncio.Event()
        # Whether the table may hold due rows the last claim left behind: it filled the room,
        # or rows were written since. Only then is freed room worth a claim, and only once a
        # batch's worth is free: a claim per finished image was most of the queue's cost on
        # the event loop (benchmarks/RESULTS.md).
        self._more = True
        self._refill = max(1, min(batch_size, queue_size // 2))
        self._fetch_workers = fetch_workers
        # By default one core is left to the model: on 2 cores, decoding on both slowed encoding.
        threads = decode_threads or max(1, (os.cpu_count() or 2) - 1)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="clip-decode")
        self.supervisor = supervisor or Supervisor()
        self._tasks: list[asyncio.Task] = []
        self._batches: set[asyncio.Task] = set()
        self._slots = asyncio.Semaphore(_BATCHES_IN_FLIGHT)
        self._encoding = 0
        self._encoder_idle = asyncio.Event()
        self._encoder_idle.set()
        self._submissions = Submissions(
            jobs, written=self._rows_written, start=self.supervisor.start
        )
        # Images read from Discord and not yet rows: what a deletion cannot reach yet. Callers
        # that read before they submit (backfill) carry theirs from the first read.
        self.arrivals = Arrivals()
        self._waves = RetryWaves(jobs)
        # ``refresh`` is the Discord adapter's; without it URLs are used as queued.
        self.signed_urls = SignedUrls(refresh)
        self._reuse = ReuseLookups(store, encoder.model_id)
        self._closing = False
        # Set once a write found the index built with another model: nothing more is claimed.
        self._switched: ModelSwitched | None = None
        # False: this process only queues images; other processes (workers) take them.
        self.consumes = consume

    @property
    def model_id(self) -> str:
        return self.encoder.model_id

    @property
    def queued(self) -> int:
        """Images in this process's window (claimed, not finished)."""
        return len(self._held)

    async def start(self) -> None:
        if not self.consumes:
            return
        start = self.supervisor.start
        self._tasks = [start(_FETCH, self._fetch_loop) for _ in range(self._fetch_workers)]
        self._tasks.append(start(_BATCH, self._batch_loop))
        self._tasks.append(start("clip-feed", self._feed_loop))
        self._tasks.append(start("clip-lease", self._renew_loop))

    async def close(self, *, deadline_s: float = 10.0) -> None:
        """Stop taking work; let the batches being encoded finish, and hand every other claimed
        job back to the table for the next consumer, all within ``deadline_s``."""
        self._closing = True
        deadline = time.monotonic() + deadline_s

        def left() -> float:  # what is left after it is for handing the rest back
            return max(deadline - time.monotonic() - _GIVE_BACK_S, _SETTLE_S)

        await settle(self._tasks, within_s=left())
        self._tasks.clear()
        if self._batches:
            _, late = await asyncio.wait(self._batches, timeout=left())
            await settle(late, within_s=left())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(left()):
                await self._submissions.close()
        await self.signed_urls.close()
        if self._held:
            within_s = min(_GIVE_BACK_S, max(deadline - time.monotonic(), _GIVE_BACK_FLOOR_S))
            if released := await self._give_back(list(self._held), within_s=within_s):
                log.info("handed %d unfinished jobs back to the queue", released)
            self._held.clear()
            self._queued.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _give_back(self, job_ids: list[int], *, within_s: float = _GIVE_BACK_S) -> int:
        """Hand claimed jobs back to the table for the next consumer, waiting at most
        ``within_s``; with the database away, their leases run out instead."""
        try:
            async with asyncio.timeout(within_s):
                return await self.jobs.release(job_ids)
        except (StoreUnavailable, TimeoutError) as exc:
            why = exc if isinstance(exc, StoreUnavailable) else f"no answer in {within_s:g}s"
            log.warning("could not hand back %d jobs (their lease runs out): %s", len(job_ids), why)
            return 0

    def wake(self) -> None:
        """Look at the table now: another process queued work."""
        self._rows_written()

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
        while True:
            await self._submissions.flushed()
            if not self.consumes:
                if not await self._with_store(self.jobs.unfinished, 1):
                    return
            elif not self._held:
                due = await self._with_store(self.jobs.due, 1)
                # Asked after the table: rows claimed while it answered are in hand by now, or
                # still being claimed.
                if not due and not self._held and not self._claiming:
                    return
                self._rows_written()  # e.g. retries come due: take them now, not at the poll
            await asyncio.sleep(0.05)

    # -- feeding the window from the table ---------------------------------------------------

    async def _feed_loop(self) -> None:
        looked = float("-inf")  # the table may hold rows already (a previous run's)
        while True:
            room = self.window - len(self._held)
            # Rows come due unannounced (retries, leases of a consumer that died): once a poll
            # interval has passed, any room is worth a look, however often the feeder was woken.
            polled = time.monotonic() - looked >= _FEED_POLL_S
            if room > 0 and (polled or (self._more and room >= self._refill)):
                looked = time.monotonic()
                self._more = False  # rows written during the claim set it again
                try:
                    claimed = await self._claim(room)
                except StoreUnavailable as exc:
                    self._more = True
                    if exc.refused:  # waiting will not cure it: the supervisor says so
                        raise
                    log.error("database unavailable, cannot take jobs: %s", exc)
                    await asyncio.sleep(_FEED_POLL_S * 2)
                    continue
                if len(claimed) == room:
                    self._more = True
                # Expired links are refreshed together, off this loop; downloads wait for them.
                self.signed_urls.prefetch(job.ref for job in claimed)
                for job in claimed:
                    # A job of ours whose lease ran out (its renewal failed) comes back with the
                    # claim: it is on its way already, and the claim renewed its lease.
                    if job.id in self._held:
                        continue
                    self._held[job.id] = job
                    self._queued[job.id] = _FETCH
                    self._intake.put_nowait(job)
            if not self._more:
                await self._waves.check()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _FEED_POLL_S)
            self._wake.clear()

    def _rows_written(self) -> None:
        self._more = True
        self._wake.set()

    async def _drop_unqueued(self, job_ids: list[int]) -> None:
        """Jobs this task claimed and could not hand on: back to the table, as it fails."""
        self._finished([self._held[i] for i in job_ids if i in self._held])
        await self._give_back(job_ids)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.jobs.lease_s / 3)
            with contextlib.suppress(StoreUnavailable):
                await self.jobs.renew(self._renewable())

    def _renewable(self) -> list[int]:
        """The held jobs whose holder runs: a job in hand, or one queued for a task that is not
        waiting to be started again after a failure. The others' leases run out, and another
        consumer takes them."""
        alive = {name: self.supervisor.running(name) for name in (_FETCH, _BATCH)}
        return [i for i in self._held if alive.get(self._queued.get(i, ""), True)]

    async def _claim(self, room: int) -> list[Job]:
        if self._switched is not None:  # whatever it encoded could not be stored
            return []
        self._claiming = True  # join() must not take these rows for done while they come
        try:
            return await self.jobs.claim(room)
        finally:
            self._claiming = False

    def _finished(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            self._held.pop(job.id, None)
            self._queued.pop(job.id, None)
        self._wake.set()  # room in the window

    # -- fetch and decode --------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        while True:
            job = await self._intake.get()
            self._queued.pop(job.id, None)
            try:
                await self._fetch_job(job)
            except Exception:  # this worker fails: its job goes back for the next try
                await self._give_back([job.id])
                raise

    async def _fetch_job(self, job: Job) -> None:
        self.counters.in_flight += 1
        handed_on = False
        try:
            handed_on = await self._fetch_one(job)
        except asyncio.CancelledError:
            handed_on = True  # shutting down: the job stays held, and close() hands it back
            raise
        except FetchError as exc:
            await self._failed(job, exc, transient=exc.retryable)
        except (ClipfindError, ImageError) as exc:
            await self._failed(job, exc, transient=False)
        except StoreUnavailable as exc:
            if exc.refused:  # would be refused again each time its lease brought it back
                with contextlib.suppress(StoreUnavailable):
                    await self._failed(job, exc, transient=False, reason=refusal_reason(exc))
            else:  # the job stays claimed; its lease brings it back
                log.error("database unavailable while indexing %s: %s", job.ref.filename, exc)
        except Exception as exc:  # a bug must not kill the worker; say so loudly
            log.exception(
                "unexpected error indexing %s of message %s",
                job.ref.filename,
                job.ref.message_id,
            )
            await self._failed(job, exc, transient=True, reason="internal")
        finally:
            self.counters.in_flight -= 1
            if not handed_on:
                self._finished([job])

    async def _fetch_one(self, job: Job) -> bool:
        """Returns True when the image went on to the batcher (which then finishes it)."""
        ref = job.ref
        data = await self._download(job)
        loop = asyncio.get_running_loop()
        kind = sniff_image_type(data[:64])
        if kind is None:
            raise NotAnImage(f"declared {ref.content_type or 'unknown type'}, bytes are no image")
        content_type = f"image/{kind}"
        content_hash = await loop.run_in_executor(self._pool, _sha256, data)
        reused = await self._with_store(self._reuse.embedding_for, content_hash)
        if reused is not None:
            record = _record(ref, content_hash, content_type, self.model_id, reused)
            self.counters.reused += await self._write([record], [job])
            return False
        work = functools.partial(prepare, data, self.spec, max_pixels=self.max_pixels)
        pixels = await loop.run_in_executor(self._pool, work)
        # Raw bytes can be megabytes; drop them before waiting on the batcher.
        del data, work
        await self._prepared.put(_Prepared(job, content_hash, content_type, pixels))
        self._queued[job.id] = _BATCH
        return True

    async def _download(self, job: Job) -> bytes:
        ref = job.ref
        url = ref.url
        if self.signed_urls.expired(ref):
            # Expiry is read by this machine's clock, which can disagree with Discord's: a link
            # Discord hands back unchanged is left to the download, which decides.
            url = await self._fresh_url(job) or url
        try:
            return await self.fetcher.fetch(url, declared_size=ref.size)
        except FetchError as exc:
            # An expired link answers like a deleted attachment: only a refresh tells them apart.
            # One refreshed just now and refused all the same is gone.
            if exc.reason not in _EXPIRED_LINK or not self.signed_urls.applies(ref):
                raise
            if url != ref.url:
                raise
            fresh = await self._fresh_url(job, dead=True)
            if fresh is None:
                raise  # Discord did not refresh it: the attachment is gone
        # Links issued with this one are dead too: the ones in hand are refreshed together now.
        self.signed_urls.prefetch(held.ref for held in self._held.values())
        return await self.fetcher.fetch(fresh, declared_size=ref.size)

    async def _fresh_url(self, job: Job, *, dead: bool = False) -> str | None:
        """A fresh link for the job's, kept on its row for later attempts; None when Discord
        did not refresh it (the attachment is gone)."""
        fresh = await self.signed_urls.fresh(job.ref.url, dead=dead)
        if fresh is not None:
            if job.id in self._held:  # not refreshed again with the ones in hand
                self._held[job.id] = _with_url(job, fresh)
            with contextlib.suppress(StoreUnavailable):  # this attempt has it anyway
                await self.jobs.set_urls({job.id: fresh})
        return fresh

    async def _failed(
        self, job: Job, error: Exception, *, transient: bool, reason: str | None = None
    ) -> None:
        reason = reason or getattr(error, "reason", "internal")
        ref = job.ref
        where = f"{ref.filename} of message {ref.message_id} (guild {ref.guild_id})"
        if transient:
            retry_after = getattr(error, "retry_after", None)
            delay = await self._with_store(
                functools.partial(
                    self.jobs.retry, job, reason=reason, error=str(error), retry_after=retry_after
                )
            )
            if delay is not None:
                self.counters.retried += 1
                self._waves.failed(reason, delay)
                log.debug("will retry %s in %.1fs: %s: %s", where, delay, reason, error)
                return
            reason = f"gave_up_{reason}"
        else:
            await self._with_store(self.jobs.fail, [job], reason)
        self.counters.failed[reason] += 1
        log.warning("skipped image %s: %s: %s", where, reason, error)

    # -- batch, encode, store ----------------------------------------------------------------

    async def _batch_loop(self) -> None:
        slots = self._slots
        while True:
            await slots.acquire()
            batch: list[_Prepared] = []
            try:
                batch = await self._collect_batch(batch)
                for item in batch:
                    self._queued.pop(item.job.id, None)
                task = asyncio.create_task(
                    self._finish_batch(batch, slots), name="clip-batch-write"
                )
            except BaseException as exc:
                slots.release()
                if isinstance(exc, Exception):  # failing: what it collected goes back
                    await self._drop_unqueued([item.job.id for item in batch])
                raise
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _collect_batch(self, batch: list[_Prepared]) -> list[_Prepared]:
        """Up to a full batch, collected into ``batch``; a partial one after the deadline, but
        only for an idle encoder.

        A partial batch sent while the encoder is busy would only wait there, and small batches
        cost far more per image (4x at batch 4 than at 16 on CPU, benchmarks/RESULTS.md).
        """
        batch.append(await self._prepared.get())
        deadline = time.monotonic() + self.batch_deadline_s
        while len(batch) < self.batch_size:
            timeout = deadline - time.monotonic()
            if timeout <= 0 and self._encoder_idle.is_set():
                break
            item = await self._next_prepared(None if timeout <= 0 else timeout)
            if item is not None:
                batch.append(item)
        return batch

    async def _next_prepared(self, wait_s: float | None) -> _Prepared | None:
        """The next prepared image, or None at the timeout or when the encoder falls idle."""
        getter = asyncio.ensure_future(self._prepared.get())
        idle = asyncio.ensure_future(self._encoder_idle.wait())
        try:
            await asyncio.wait((getter, idle), timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
            # A cancelled Queue.get leaves its item in the queue; a finished one has it for us.
            getter.cancel()
        return getter.result() if getter.done() and not getter.cancelled() else None

    async def _finish_batch(self, batch: list[_Prepared], slots: asyncio.Semaphore) -> None:
        finished = True
        try:
            await self._encode_and_write(batch)
        except asyncio.CancelledError:
            finished = False  # shutting down: the jobs stay held, and close() hands them back
            raise
        except StoreUnavailable as exc:
            log.error("database unavailable; %d images go back to the queue: %s", len(batch), exc)
        except Exception as exc:  # the encoder failed: the batch is tried again later
            log.exception("error encoding a batch of %d images; they will be retried", len(batch))
            for item in batch:
                with contextlib.suppress(StoreUnavailable):
                    await self._failed(item.job, exc, transient=True, reason="encoder")
        finally:
            slots.release()
            if finished:
                self._finished([item.job for item in batch])

    async def _encode_and_write(self, batch: list[_Prepared]) -> None:
        started = time.monotonic()
        self._encoding += 1
        self._encoder_idle.clear()
        try:
            vectors = await self.encoder.encode_images(np.stack([item.pixels for item in batch]))
        finally:
            self._encoding -= 1
            if not self._encoding:
                self._encoder_idle.set()
        records = [
            _record(item.job.ref, item.content_hash, item.content_type, self.model_id, vector)
            for item, vector in zip(batch, vectors, strict=True)
        ]
        written = await self._write(records, [item.job for item in batch])
        self.counters.indexed += written
        guilds = Counter(item.job.ref.guild_id for item in batch)
        failed = self.counters.failed
        log.info(
            "indexed %d images (%s) in %.2fs; in window %d, indexed %d, %.1f img/s%s",
            written,
            ", ".join(f"guild {g}: {n}" for g, n in guilds.items()),
            time.monotonic() - started,
            len(self._held),
            self.counters.indexed + self.counters.reused,
            self.counters.images_per_s(),
            f"; skipped {sum(failed.values())} ({dict(failed)})" if failed else "",
        )

    async def _write(self, records: list[ImageRecord], jobs: list[Job]) -> int:
        """Store the records and delete their jobs in one transaction; returns how many the
        database took (not those whose job was deleted meanwhile, nor what its policy forbids).

        A vector that is not finite is failed for good before the write, and a row the database
        refuses is found by splitting the batch (retrieval/database/refusals.py) and failed for
        good: the rest is stored. When the index is built with another model by now, nothing is
        stored and the jobs go back to the queue."""
        pairs = []
        for record, job in zip(records, jobs, strict=True):
            if finite(record.embedding):
                pairs.append((record, job))
            else:
                error = ValueError("the model gave a vector with NaN or infinity")
                await self._failed(job, error, transient=False, reason=NON_FINITE)
        try:
            written, refused = await isolating(pairs, self._store_pairs)
        except ModelSwitched as switched:
            await self._hand_back([job for _, job in pairs], switched)
            return 0
        for (_, job), exc in refused:
            await self._failed(job, exc, transient=False, reason=refusal_reason(exc))
        stored = sum(written)
        self.counters.discarded += len(pairs) - len(refused) - stored
        if any(job.attempts for job in jobs):
            self._waves.recovered()
        return stored

    async def _store_pairs(self, pairs: Sequence[tuple[ImageRecord, Job]]) -> int:
        records, job_ids = [record for record, _ in pairs], [job.id for _, job in pairs]
        return await self._with_store(
            functools.partial(self.store.upsert, records, job_ids=job_ids)
        )

    async def _hand_back(self, jobs: list[Job], switched: ModelSwitched) -> None:
        """Give the jobs back unfinished, for a consumer with the index's model, and claim no
        more: this process's model is not the index's any longer."""
        first = self._switched is None
        self._switched = switched
        with contextlib.suppress(StoreUnavailable):  # else their lease runs out
            await self.jobs.release([job.id for job in jobs])
        log.log(
            logging.ERROR if first else logging.INFO,
            "%s (this process's): %d images handed back to the queue for a process with the "
            "index's model%s",
            switched,
            len(jobs),
            "; this one takes no more images" if first else "",
        )

    async def _with_store(self, call, *args):
        """Call the store, waiting out an outage instead of dropping the work in hand (a
        refusal is raised: see `_write`)."""

        def waiting(exc: StoreUnavailable, delay: float) -> None:
            log.error("database unavailable, retrying in %.1fs: %s", delay, exc)

        return await patiently(
            functools.partial(call, *args), waiting=waiting, give_up=lambda: self._closing
        )


def _with_url(job: Job, url: str) -> Job:
    return replace(job, ref=replace(job.ref, url=url))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _record(
    ref: ImageRef, content_hash: str, content_type: str, model_id: str, vector: np.ndarray
) -> ImageRecord:
    return ImageRecord(
        guild_id=ref.guild_id,
        channel_id=ref.channel_id,
        message_id=ref.message_id,
        image_key=ref.image_key,
        kind=ref.kind,
        author_id=ref.author_id,
        posted_at=ref.posted_at,
        filename=ref.filename[:255],
        source_url=ref.source_url,
        content_type=content_type,
        content_hash=content_hash,
        model_id=model_id,
        embedding=np.asarray(vector, dtype=np.float32),
        parent_id=ref.parent_id,
    )
