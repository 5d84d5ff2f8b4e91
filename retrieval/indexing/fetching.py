"""The fetch workers: each takes a held job, downloads its picture (`downloads.py`: a signed link
that expired is refreshed first), and either stores the vector already held for the same bytes or
decodes the picture, in a thread, for the batcher."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from retrieval.encoding.service import EncoderService
from retrieval.indexing.downloads import Downloads
from retrieval.indexing.jobs import Job
from retrieval.indexing.outcomes import Outcomes, PipelineCounters, record
from retrieval.indexing.reuse import ReuseLookups
from retrieval.indexing.signed_urls import SignedUrls
from retrieval.indexing.window import BATCH, Window
from retrieval.pictures.fetch import Fetcher
from retrieval.pictures.images import (
    NotAnImage,
    PreprocessSpec,
    prepare,
    sniff_image_type,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Prepared:
    """A picture decoded into the model's input, waiting for its batch."""

    job: Job
    content_hash: str
    content_type: str
    pixels: np.ndarray


class Fetching:
    def __init__(
        self,
        *,
        window: Window,
        fetcher: Fetcher,
        signed_urls: SignedUrls,
        reuse: ReuseLookups,
        outcomes: Outcomes,
        counters: PipelineCounters,
        spec: PreprocessSpec,
        max_pixels: int,
        encoder: EncoderService,
        pool: ThreadPoolExecutor,
        prepared: asyncio.Queue[Prepared],
    ) -> None:
        self._window = window
        self._downloads = Downloads(window=window, fetcher=fetcher, signed_urls=signed_urls)
        self._reuse = reuse
        self._outcomes = outcomes
        self._counters = counters
        self._spec = spec
        self._max_pixels = max_pixels
        self._encoder = encoder  # whose model the vectors are of
        self._pool = pool
        self._prepared = prepared

    async def loop(self) -> None:
        while True:
            job = await self._window.intake.get()
            self._window.taken(job.id)
            try:
                await self._job(job)
            except Exception:  # this worker fails: its job goes back for the next try
                await self._window.give_back([job.id])
                raise

    async def _job(self, job: Job) -> None:
        self._counters.in_flight += 1
        handed_on = False
        try:
            handed_on = await self._one(job)
        except asyncio.CancelledError:
            handed_on = True  # shutting down: the job stays held, and close() hands it back
            raise
        except Exception as exc:  # a bug must not kill the worker: see Outcomes.failed_by
            await self._outcomes.failed_by(job, exc, doing="indexing")
        finally:
            self._counters.in_flight -= 1
            if not handed_on:
                self._window.finished([job])

    async def _one(self, job: Job) -> bool:
        """Returns True when the image went on to the batcher (which then finishes it)."""
        ref = job.ref
        data = await self._downloads.bytes_of(job)
        loop = asyncio.get_running_loop()
        kind = sniff_image_type(data[:64])
        if kind is None:
            raise NotAnImage(f"declared {ref.content_type or 'unknown type'}, bytes are no image")
        content_type = f"image/{kind}"
        content_hash = await loop.run_in_executor(self._pool, _sha256, data)
        reused = await self._outcomes.with_store(self._reuse.embedding_for, content_hash)
        if reused is not None:
            found = record(
                ref,
                content_hash=content_hash,
                content_type=content_type,
                model_id=self._encoder.model_id,
                vector=reused,
            )
            self._counters.reused += await self._outcomes.write([found], [job])
            return False
        work = functools.partial(prepare, data, self._spec, max_pixels=self._max_pixels)
        pixels = await loop.run_in_executor(self._pool, work)
        # Raw bytes can be megabytes; drop them before waiting on the batcher.
        del data, work
        await self._prepared.put(Prepared(job, content_hash, content_type, pixels))
        self._window.taken(job.id, by=BATCH)
        return True


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
