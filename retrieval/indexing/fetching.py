"""The fetch workers: each takes a held job, downloads its picture (`downloads.py`: a signed link
that expired is refreshed first; a smaller copy from the media proxy where one can be asked for),
and either stores the vector already held for the same bytes or decodes the picture, in a
thread, for the batcher.

A picture is known by the SHA-256 of the bytes the model read: equal bytes give an equal vector,
so the vector of bytes seen before is reused, and searches show such pictures as one with its
reposts. The proxy's copy of one original at one size is the same bytes each time, so reposts
read through the proxy share a hash as reposts of originals do. A picture indexed from its
original (before the proxy was used, or after a fallback) and a repost read as a copy hash
differently: the repost is encoded once more, and searches group the two by their vectors
(`retrieval/search/ranking.py`), which differ by far less than that threshold."""

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
from retrieval.indexing.jobs import ImageRef, Job
from retrieval.indexing.outcomes import Outcomes, PipelineCounters, record
from retrieval.indexing.reuse import ReuseLookups
from retrieval.indexing.window import BATCH, Window
from retrieval.pictures.images import (
    NotAnImage,
    PreprocessSpec,
    prepare,
    sniff_image_type,
)

log = logging.getLogger(__name__)

_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})


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
        downloads: Downloads,
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
        self._downloads = downloads
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
        picture = await self._downloads.picture_of(job)
        data, resized = picture.data, picture.resized
        del picture  # the bytes can be megabytes: only `data` holds them, dropped below
        loop = asyncio.get_running_loop()
        kind = sniff_image_type(data[:64])
        if kind is None:
            raise NotAnImage(f"declared {ref.content_type or 'unknown type'}, bytes are no image")
        content_type = _content_type(ref, kind, resized=resized)
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


def _content_type(ref: ImageRef, kind: str, *, resized: bool) -> str:
    """The picture's type: what its bytes are, but for a resized copy (a WebP or JPEG made by
    the proxy) the original's, as declared."""
    declared = ref.content_type.split(";", 1)[0].strip().lower()
    if resized and declared in _IMAGE_TYPES:
        return declared
    return f"image/{kind}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
