"""The fetch workers: each takes a held job, downloads its picture (a signed link that expired is
refreshed first; a smaller copy from the media proxy where one can be asked for: `resized.py`),
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
import contextlib
import functools
import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from retrieval.database.refusals import refusal_reason
from retrieval.encoding.service import EncoderService
from retrieval.errors import ClipfindError, FetchError, StoreUnavailable
from retrieval.indexing.jobs import ImageRef, Job
from retrieval.indexing.outcomes import Outcomes, PipelineCounters, record
from retrieval.indexing.resized import Downloads, Picture
from retrieval.indexing.reuse import ReuseLookups
from retrieval.indexing.signed_urls import SignedUrls
from retrieval.indexing.window import BATCH, Window
from retrieval.pictures.images import (
    ImageError,
    NotAnImage,
    PreprocessSpec,
    prepare,
    sniff_image_type,
)

log = logging.getLogger(__name__)

# What a signed attachment URL answers once it has expired (or was re-signed).
_EXPIRED_LINK = frozenset({"http_403", "http_404"})
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
        self._downloads = downloads
        self._signed_urls = signed_urls
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
        failed = self._outcomes.failed
        try:
            handed_on = await self._one(job)
        except asyncio.CancelledError:
            handed_on = True  # shutting down: the job stays held, and close() hands it back
            raise
        except FetchError as exc:
            await failed(job, exc, transient=exc.retryable)
        except (ClipfindError, ImageError) as exc:
            await failed(job, exc, transient=False)
        except StoreUnavailable as exc:
            if exc.refused:  # would be refused again each time its lease brought it back
                with contextlib.suppress(StoreUnavailable):
                    await failed(job, exc, transient=False, reason=refusal_reason(exc))
            else:  # the job stays claimed; its lease brings it back
                log.error("database unavailable while indexing %s: %s", job.ref.filename, exc)
        except Exception as exc:  # a bug must not kill the worker; say so loudly
            log.exception(
                "unexpected error indexing %s of message %s",
                job.ref.filename,
                job.ref.message_id,
            )
            await failed(job, exc, transient=True, reason="internal")
        finally:
            self._counters.in_flight -= 1
            if not handed_on:
                self._window.finished([job])

    async def _one(self, job: Job) -> bool:
        """Returns True when the image went on to the batcher (which then finishes it)."""
        ref = job.ref
        picture = await self._download(job)
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

    async def _download(self, job: Job) -> Picture:
        ref = job.ref
        url = ref.url
        if self._signed_urls.expired(ref):
            # Expiry is read by this machine's clock, which can disagree with Discord's: a link
            # Discord hands back unchanged is left to the download, which decides.
            url = await self._fresh_url(job) or url
        try:
            return await self._downloads.picture(ref, url)
        except FetchError as exc:
            # An expired link answers like a deleted attachment: only a refresh tells them apart.
            # One refreshed just now and refused all the same is gone.
            if exc.reason not in _EXPIRED_LINK or not self._signed_urls.applies(ref):
                raise
            if url != ref.url:
                raise
            fresh = await self._fresh_url(job, dead=True)
            if fresh is None:
                raise  # Discord did not refresh it: the attachment is gone
        # Links issued with this one are dead too: the ones in hand are refreshed together now.
        self._signed_urls.prefetch(self._window.refs())
        return await self._downloads.picture(ref, fresh)

    async def _fresh_url(self, job: Job, *, dead: bool = False) -> str | None:
        """A fresh link for the job's, kept on its row for later attempts; None when Discord
        did not refresh it (the attachment is gone)."""
        fresh = await self._signed_urls.fresh(job.ref.url, dead=dead)
        if fresh is not None:
            self._window.with_url(job, fresh)
            with contextlib.suppress(StoreUnavailable):  # this attempt has it anyway
                await self._window.jobs.set_urls({job.id: fresh})
        return fresh


def _content_type(ref: ImageRef, kind: str, *, resized: bool) -> str:
    """The picture's type: what its bytes are, but for a resized copy (a WebP or JPEG made by
    the proxy) the original's, as declared."""
    declared = ref.content_type.split(";", 1)[0].strip().lower()
    if resized and declared in _IMAGE_TYPES:
        return declared
    return f"image/{kind}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
