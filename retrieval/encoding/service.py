"""Runs the encoder on threads of its own, one per stream, with text queries ahead of image
batches.

A plain executor is first-in first-out: a `/find` would wait behind every queued image batch of a
big backfill. Here each thread takes the most urgent job first, so a query waits for at most the
batches already running, and takes the first stream that finishes.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
from cachetools import LRUCache

_QUERY, _BATCH = 0, 1
_STOP = object()
_T = TypeVar("_T")


class ImageTextEncoder(Protocol):
    """``streams`` threads may run it at once, each after ``enter_stream()`` (an encoder without
    them runs on one thread)."""

    model_id: str
    dim: int
    default_batch_size: int

    def encode_images(self, batch: np.ndarray) -> np.ndarray: ...
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class EncoderCounters:
    text_queries: int = 0
    text_cache_hits: int = 0
    image_queries: int = 0
    image_batches: int = 0
    images: int = 0


class EncoderService:
    """Async facade over an encoder; call `close()` to stop its threads."""

    def __init__(self, encoder: ImageTextEncoder, *, text_cache_size: int = 512) -> None:
        self.encoder = encoder
        self.counters = EncoderCounters()
        # Called with each image batch's time in the model, in seconds (queue waits left out).
        self.batch_observers: list[Callable[[float], None]] = []
        self._jobs: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._text_cache: LRUCache[str, np.ndarray] = LRUCache(maxsize=text_cache_size)
        self.streams = max(1, int(getattr(encoder, "streams", 1)))
        self._threads = [
            threading.Thread(target=self._work, name="clip-encoder", daemon=True)
            for _ in range(self.streams)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def model_id(self) -> str:
        return self.encoder.model_id

    def _work(self) -> None:
        enter = getattr(self.encoder, "enter_stream", None)
        if enter is not None:
            enter()
        while True:
            _, _, job = self._jobs.get()
            if job is _STOP:
                return
            fn, future, loop = job
            # Its caller was cancelled (a stop): nobody waits for the answer. A plain read of
            # the future's state from this thread; at worst one batch is encoded for nothing.
            if future.cancelled():
                continue
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

    async def _run(self, priority: int, fn: Callable[[], _T]) -> _T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._jobs.put((priority, next(self._order), (fn, future, loop)))
        return await future

    async def encode_text(self, text: str) -> np.ndarray:
        """One query's vector; repeated queries come from an LRU cache, not the model."""
        self.counters.text_queries += 1
        cached = self._text_cache.get(text)
        if cached is not None:
            self.counters.text_cache_hits += 1
            return cached
        vector = (await self._run(_QUERY, lambda: self.encoder.encode_texts([text])))[0]
        self._text_cache[text] = vector
        return vector

    async def encode_query_image(self, pixels: np.ndarray) -> np.ndarray:
        """One preprocessed query image (3, H, W) → its vector, ahead of indexing batches."""
        self.counters.image_queries += 1
        batch = pixels[np.newaxis]
        return (await self._run(_QUERY, lambda: self.encoder.encode_images(batch)))[0]

    def count_tokens(self, text: str) -> int:
        """Tokens the text takes, 0 when the encoder cannot say (then nothing is cut)."""
        count = getattr(self.encoder, "count_tokens", None)
        return count(text) if count else 0

    @property
    def context_length(self) -> int:
        return int(getattr(self.encoder, "context_length", 77))

    async def encode_images(self, batch: np.ndarray) -> np.ndarray:
        def timed() -> tuple[np.ndarray, float]:
            started = time.perf_counter()
            return self.encoder.encode_images(batch), time.perf_counter() - started

        vectors, seconds = await self._run(_BATCH, timed)
        self.counters.image_batches += 1
        self.counters.images += len(batch)
        for observe in self.batch_observers:
            observe(seconds)
        return vectors

    async def close(self) -> None:
        """Stop the model's threads once the work queued before is done (batches whose callers
        were cancelled are skipped). A batch in the model is waited for: torch aborts the
        process when it exits under a running one."""
        for _ in self._threads:
            self._jobs.put((_BATCH + 1, next(self._order), _STOP))
        for thread in self._threads:
            await asyncio.to_thread(thread.join)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
