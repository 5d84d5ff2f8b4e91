"""The async indexing pipeline: fetch → decode (thread pool) → micro-batch → encode → store.

Every queue is bounded, so a flood of images slows intake (``submit`` waits) instead of growing
memory. CPU work never runs on the event loop: hashing and decoding go to a thread pool, the
model to the encoder's own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from retrieval.encoding import EncoderService
from retrieval.errors import ClipfindError, StoreUnavailable
from retrieval.fetch import Fetcher
from retrieval.images import ImageError, NotAnImage, PreprocessSpec, prepare, sniff_image_type
from retrieval.indexing.jobs import ImageRef
from retrieval.store.base import ImageRecord, VectorStore

log = logging.getLogger(__name__)

_STORE_RETRY_FIRST_S = 0.5
# Deleted message ids remembered for images in flight; far more than the queues can hold.
_GONE_REMEMBERED = 100_000
# While one batch encodes the next is formed and waits at the encoder, and the first one's write
# overlaps the next encode: the model does not idle on the store (benchmarks/RESULTS.md).
_BATCHES_IN_FLIGHT = 2
_STORE_RETRY_MAX_S = 30.0


@dataclass
class PipelineCounters:
    submitted: int = 0
    indexed: int = 0
    reused: int = 0  # same bytes already encoded: vector copied, model skipped
    already_known: int = 0
    discarded: int = 0  # deleted, excluded or opted out while on their way
    in_flight: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    # Per server, so each one's status shows its own figures only: images submitted and not
    # finished yet, and skipped images by reason.
    waiting: Counter[int] = field(default_factory=Counter)
    failed_in: dict[int, Counter[str]] = field(default_factory=dict)

    def images_per_s(self) -> float:
        elapsed = time.monotonic() - self.started
        return (self.indexed + self.reused) / elapsed if elapsed > 0 else 0.0

    def count_skipped(self, guild_id: int, reason: str) -> None:
        self.failed[reason] += 1
        self.failed_in.setdefault(guild_id, Counter())[reason] += 1

    def finished(self, guild_id: int) -> None:
        self.waiting[guild_id] -= 1
        if self.waiting[guild_id] <= 0:
            del self.waiting[guild_id]


@dataclass(slots=True)
class _Prepared:
    ref: ImageRef
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
        spec: PreprocessSpec,
        max_pixels: int,
        batch_size: int,
        batch_deadline_s: float,
        queue_size: int = 256,
        fetch_workers: int = 8,
        decode_threads: int | None = None,
        admit: Callable[[ImageRef], bool] | None = None,
    ) -> None:
        self.fetcher = fetcher
        self.encoder = encoder
        self.store = store
        self.spec = spec
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        self.batch_deadline_s = batch_deadline_s
        self.counters = PipelineCounters()
        self._intake: asyncio.Queue[ImageRef] = asyncio.Queue(maxsize=queue_size)
        self._prepared: asyncio.Queue[_Prepared] = asyncio.Queue(maxsize=batch_size * 2)
        self._fetch_workers = fetch_workers
        # By default one core is left to the model: on 2 cores, decoding on both slowed encoding.
        threads = decode_threads or max(1, (os.cpu_count() or 2) - 1)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="clip-decode")
        self._tasks: list[asyncio.Task] = []
        self._batches: set[asyncio.Task] = set()
        self._encoding = 0
        self._encoder_idle = asyncio.Event()
        self._encoder_idle.set()
        # Asked again just before each write: an image can spend seconds in the queues, and a
        # deletion, exclusion or opt-out in that time must win.
        self._admit = admit
        self._gone: OrderedDict[int, None] = OrderedDict()
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def model_id(self) -> str:
        return self.encoder.model_id

    @property
    def queued(self) -> int:
        return self._intake.qsize() + self._prepared.qsize()

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._fetch_loop(), name=f"clip-fetch-{i}")
            for i in range(self._fetch_workers)
        ]
        self._tasks.append(asyncio.create_task(self._batch_loop(), name="clip-batch"))

    async def close(self) -> None:
        tasks = [*self._tasks, *self._batches]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._pending:
            log.warning("pipeline closed with %d images not indexed", self._pending)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def submit(self, refs: Iterable[ImageRef]) -> None:
        """Queue images; waits while the pipeline is full (backpressure, nothing dropped)."""
        for ref in refs:
            self._pending += 1
            self._idle.clear()
            self.counters.submitted += 1
            self.counters.waiting[ref.guild_id] += 1
            await self._intake.put(ref)

    def forget_messages(self, message_ids: Iterable[int]) -> None:
        """Messages deleted on Discord: their images still in the pipeline are not written."""
        for message_id in message_ids:
            self._gone[message_id] = None
            self._gone.move_to_end(message_id)
        while len(self._gone) > _GONE_REMEMBERED:
            self._gone.popitem(last=False)

    def _admitted(self, ref: ImageRef) -> bool:
        if ref.message_id in self._gone or (self._admit is not None and not self._admit(ref)):
            self.counters.discarded += 1
            return False
        return True

    async def join(self) -> None:
        """Wait until every submitted image is indexed or has failed."""
        await self._idle.wait()

    def _done(self, refs: list[ImageRef]) -> None:
        for ref in refs:
            self.counters.finished(ref.guild_id)
        self._pending -= len(refs)
        if self._pending <= 0:
            self._pending = 0
            self._idle.set()

    def _fail(self, ref: ImageRef, error: ClipfindError | ImageError) -> None:
        self.counters.count_skipped(ref.guild_id, error.reason)
        log.warning(
            "skipped image %s of message %s in channel %s (guild %s): %s: %s",
            ref.filename,
            ref.message_id,
            ref.channel_id,
            ref.guild_id,
            error.reason,
            error,
        )

    async def _fetch_loop(self) -> None:
        while True:
            ref = await self._intake.get()
            self.counters.in_flight += 1
            handed_on = False
            try:
                handed_on = await self._fetch_one(ref)
            except (ClipfindError, ImageError) as exc:
                self._fail(ref, exc)
            except Exception:  # a bug must not kill the worker; say so loudly
                log.exception(
                    "unexpected error indexing %s of message %s", ref.filename, ref.message_id
                )
                self.counters.count_skipped(ref.guild_id, "internal")
            finally:
                self.counters.in_flight -= 1
                if not handed_on:
                    self._done([ref])

    async def _fetch_one(self, ref: ImageRef) -> bool:
        """Returns True when the image went on to the batcher (which then finishes it)."""
        if not self._admitted(ref):
            return False
        known = await self._with_store(self.store.known_keys, ref.message_id, self.model_id)
        if ref.image_key in known:
            self.counters.already_known += 1
            return False
        data = await self.fetcher.fetch(ref.url, declared_size=ref.size)
        loop = asyncio.get_running_loop()
        kind = sniff_image_type(data[:64])
        if kind is None:
            raise NotAnImage(f"declared {ref.content_type or 'unknown type'}, bytes are no image")
        content_type = f"image/{kind}"
        content_hash = await loop.run_in_executor(self._pool, _sha256, data)
        reused = await self._with_store(self.store.embedding_for, content_hash, self.model_id)
        if reused is not None:
            if self._admitted(ref):
                record = _record(ref, content_hash, content_type, self.model_id, reused)
                self.counters.reused += await self._write([record])
            return False
        job = functools.partial(prepare, data, self.spec, max_pixels=self.max_pixels)
        pixels = await loop.run_in_executor(self._pool, job)
        # Raw bytes can be megabytes; drop them before waiting on the batcher.
        del data, job
        await self._prepared.put(_Prepared(ref, content_hash, content_type, pixels))
        return True

    async def _batch_loop(self) -> None:
        slots = asyncio.Semaphore(_BATCHES_IN_FLIGHT)
        while True:
            await slots.acquire()
            batch = await self._collect_batch()
            task = asyncio.create_task(self._finish_batch(batch, slots), name="clip-batch-write")
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _collect_batch(self) -> list[_Prepared]:
        """Up to a full batch; a partial one after the deadline, but only for an idle encoder.

        A partial batch sent while the encoder is busy would only wait there, and small batches
        cost far more per image (4x at batch 4 than at 16 on CPU, benchmarks/RESULTS.md).
        """
        batch = [await self._prepared.get()]
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
        try:
            await self._encode_and_write(batch)
        except Exception:
            log.exception("unexpected error encoding a batch of %d images", len(batch))
            for item in batch:
                self.counters.count_skipped(item.ref.guild_id, "internal")
        finally:
            slots.release()
            self._done([item.ref for item in batch])

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
            _record(item.ref, item.content_hash, item.content_type, self.model_id, vector)
            for item, vector in zip(batch, vectors, strict=True)
            if self._admitted(item.ref)
        ]
        if not records:
            return
        written = await self._write(records)
        self.counters.indexed += written
        guilds = Counter(item.ref.guild_id for item in batch)
        failed = self.counters.failed
        log.info(
            "indexed %d images (%s) in %.2fs; queued %d, in flight %d, indexed %d, %.1f img/s%s",
            len(records),
            ", ".join(f"guild {g}: {n}" for g, n in guilds.items()),
            time.monotonic() - started,
            self.queued,
            self.counters.in_flight,
            self.counters.indexed + self.counters.reused,
            self.counters.images_per_s(),
            f"; skipped {sum(failed.values())} ({dict(failed)})" if failed else "",
        )

    async def _write(self, records: list[ImageRecord]) -> int:
        """Store the records; returns how many the database took (it refuses those its policy
        tables forbid, whatever this process remembers)."""
        written = await self._with_store(self.store.upsert, records)
        self.counters.discarded += len(records) - written
        return written

    async def _with_store(self, call, *args):
        """Call the store, waiting out an outage instead of losing the work in hand."""
        delay = _STORE_RETRY_FIRST_S
        while True:
            try:
                return await call(*args)
            except StoreUnavailable as exc:
                log.error("database unavailable, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _STORE_RETRY_MAX_S)


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
