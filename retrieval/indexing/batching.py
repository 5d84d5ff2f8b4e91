"""Prepared pictures into batches for the encoder: a full batch, or a partial one after the
deadline, but only for an idle stream of the encoder. While a batch encodes in each stream the
next is formed and waits at the encoder, and a batch's write overlaps the next encode: the model
does not idle on the store (benchmarks/RESULTS.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable

import numpy as np

from retrieval.encoding.service import EncoderService
from retrieval.errors import StoreUnavailable
from retrieval.indexing.fetching import Prepared
from retrieval.indexing.outcomes import Outcomes, PipelineCounters, record
from retrieval.indexing.window import Window
from retrieval.supervisor import settle

log = logging.getLogger(__name__)


class Batching:
    def __init__(
        self,
        *,
        window: Window,
        encoder: EncoderService,
        outcomes: Outcomes,
        counters: PipelineCounters,
        prepared: asyncio.Queue[Prepared],
        batch_size: int,
        deadline_s: float,
    ) -> None:
        self._window = window
        self._encoder = encoder
        self._outcomes = outcomes
        self._counters = counters
        self._prepared = prepared
        self._batch_size = batch_size
        self._deadline_s = deadline_s
        self._batches: set[asyncio.Task] = set()  # being encoded or written
        # One batch in each stream of the encoder, and one waiting for the first to be free.
        self._streams = encoder.streams
        self._slots = asyncio.Semaphore(self._streams + 1)
        self._encoding = 0
        self._encoder_idle = asyncio.Event()
        self._encoder_idle.set()

    async def loop(self) -> None:
        slots = self._slots
        while True:
            await slots.acquire()
            batch: list[Prepared] = []
            try:
                batch = await self._collect(batch)
                for item in batch:
                    self._window.taken(item.job.id)
                task = asyncio.create_task(self._finish(batch, slots), name="clip-batch-write")
            except BaseException as exc:
                slots.release()
                if isinstance(exc, Exception):  # failing: what it collected goes back
                    await self._window.drop([item.job.id for item in batch])
                raise
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def settle(self, left: Callable[[], float]) -> None:
        """At a stop: the batches being encoded finish within ``left()``, or are cancelled."""
        if self._batches:
            _, late = await asyncio.wait(self._batches, timeout=left())
            await settle(late, within_s=left())

    async def _collect(self, batch: list[Prepared]) -> list[Prepared]:
        """Up to a full batch, collected into ``batch``; a partial one after the deadline, but
        only for an idle stream of the encoder.

        A partial batch sent while every stream is busy would only wait there, and small batches
        cost far more per image (4x at batch 4 than at 16 on CPU, benchmarks/RESULTS.md).
        """
        batch.append(await self._prepared.get())
        deadline = time.monotonic() + self._deadline_s
        while len(batch) < self._batch_size:
            timeout = deadline - time.monotonic()
            if timeout <= 0 and self._encoder_idle.is_set():
                break
            item = await self._next_prepared(None if timeout <= 0 else timeout)
            if item is not None:
                batch.append(item)
        return batch

    async def _next_prepared(self, wait_s: float | None) -> Prepared | None:
        """The next prepared image; None after ``wait_s``, or, past the deadline (None), when a
        stream falls idle. Before the deadline an idle stream is no reason to wake: woken at
        once, the batcher spun on the event loop until the deadline."""
        if not self._prepared.empty():
            return self._prepared.get_nowait()
        getter = asyncio.ensure_future(self._prepared.get())
        idle = asyncio.ensure_future(self._encoder_idle.wait()) if wait_s is None else None
        try:
            await asyncio.wait(
                (getter,) if idle is None else (getter, idle),
                timeout=wait_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            if idle is not None:
                idle.cancel()
            # A cancelled Queue.get leaves its item in the queue; a finished one has it for us.
            getter.cancel()
        return getter.result() if getter.done() and not getter.cancelled() else None

    async def _finish(self, batch: list[Prepared], slots: asyncio.Semaphore) -> None:
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
                    await self._outcomes.failed(item.job, exc, transient=True, reason="encoder")
        finally:
            slots.release()
            if finished:
                self._window.finished([item.job for item in batch])

    async def _encode_and_write(self, batch: list[Prepared]) -> None:
        started = time.monotonic()
        self._encoding += 1
        if self._encoding >= self._streams:
            self._encoder_idle.clear()
        try:
            vectors = await self._encoder.encode_images(np.stack([item.pixels for item in batch]))
        finally:
            self._encoding -= 1
            if self._encoding < self._streams:
                self._encoder_idle.set()
        model_id = self._encoder.model_id
        records = [
            record(
                item.job.ref,
                content_hash=item.content_hash,
                content_type=item.content_type,
                model_id=model_id,
                vector=vector,
            )
            for item, vector in zip(batch, vectors, strict=True)
        ]
        written = await self._outcomes.write(records, [item.job for item in batch])
        counters = self._counters
        counters.indexed += written
        guilds = Counter(item.job.ref.guild_id for item in batch)
        failed = counters.failed
        log.info(
            "indexed %d images (%s) in %.2fs; in window %d, indexed %d, %.1f img/s%s",
            written,
            ", ".join(f"guild {g}: {n}" for g, n in guilds.items()),
            time.monotonic() - started,
            len(self._window),
            counters.indexed + counters.reused,
            counters.images_per_s(),
            f"; skipped {sum(failed.values())} ({dict(failed)})" if failed else "",
        )
