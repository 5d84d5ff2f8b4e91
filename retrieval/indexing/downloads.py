"""Downloading a held job's picture: a signed attachment link that expired is refreshed first
(and kept on the job's row for later attempts), one kept without its signature (a reading of an
image stored before) is signed first, and one refused as expired is refreshed and tried once
more. Both lanes of the queue download this way: the model's lane asks for the media proxy's copy
at the model's size (`resized.py`); the reading lane takes the original, whose small text a
copy for the model would blur."""

from __future__ import annotations

import contextlib

from retrieval.errors import FetchError, StoreUnavailable
from retrieval.indexing.jobs import ImageRef, Job
from retrieval.indexing.resized import Picture, ResizingFetcher
from retrieval.indexing.signed_urls import SignedUrls, expires_at
from retrieval.indexing.window import Window
from retrieval.pictures.fetch import Fetcher

# What a signed attachment URL answers once it has expired (or was re-signed).
_EXPIRED_LINK = frozenset({"http_403", "http_404"})


class Downloads:
    def __init__(
        self,
        *,
        window: Window,
        fetcher: Fetcher,
        signed_urls: SignedUrls,
        resizing: ResizingFetcher | None = None,
    ) -> None:
        self._window = window
        self._fetcher = fetcher
        self._signed_urls = signed_urls
        self._resizing = resizing

    async def bytes_of(self, job: Job) -> bytes:
        """The job's original picture."""
        return (await self._download(job, sized=False)).data

    async def picture_of(self, job: Job) -> Picture:
        """The job's picture for the model: the proxy's copy where one can be asked for."""
        return await self._download(job, sized=True)

    async def _download(self, job: Job, *, sized: bool) -> Picture:
        """Through a fresh link where the job's own expired or was refused."""
        ref = job.ref
        url = ref.url
        if self._unsigned(job):
            # A link kept without its signature (an image stored before its words were read):
            # Discord answers only a signed one, so it is signed first.
            url = await self._fresh_url(job) or url
        elif self._signed_urls.expired(ref):
            # Expiry is read by this machine's clock, which can disagree with Discord's: a link
            # Discord hands back unchanged is left to the download, which decides.
            url = await self._fresh_url(job) or url
        try:
            return await self._get(ref, url, sized=sized)
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
        return await self._get(ref, fresh, sized=sized)

    async def _get(self, ref: ImageRef, url: str, *, sized: bool) -> Picture:
        if sized and self._resizing is not None:
            return await self._resizing.picture(ref, url)
        return Picture(await self._fetcher.fetch(url, declared_size=ref.size), resized=False)

    def _unsigned(self, job: Job) -> bool:
        ref = job.ref
        return (
            self._signed_urls.refresh is not None
            and ref.kind == "attachment"
            and expires_at(ref.url) is None
            and "/attachments/" in ref.url
        )

    async def _fresh_url(self, job: Job, *, dead: bool = False) -> str | None:
        """A fresh link for the job's, kept on its row for later attempts; None when Discord
        did not refresh it (the attachment is gone)."""
        fresh = await self._signed_urls.fresh(job.ref.url, dead=dead)
        if fresh is not None:
            self._window.with_url(job, fresh)
            with contextlib.suppress(StoreUnavailable):  # this attempt has it anyway
                await self._window.jobs.set_urls({job.id: fresh})
        return fresh
