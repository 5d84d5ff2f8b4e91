"""Downloading a picture as the model needs it: a smaller copy from Discord's media proxy where
one can be asked for, the original otherwise.

A job whose message gave the picture's size and a proxy link (`ImageRef.proxy_url`, `width`,
`height`) is asked of the proxy at 1.5x the model's input (retrieval/pictures/media_proxy.py):
a 12 MP photo comes back as a few tens of kilobytes that decode in a few milliseconds. Discord
calls these parameters a client feature, not a contract, so the copy is only a first try: any
refusal (415 for what has no dimensions, any other 4xx, an outage outlasting the fetcher's own
retries) or an answer that cannot stand in for the original (`check_answer`: unreadable, or too
small for the model) downloads the original instead, in the same attempt. Both go through the
same `Fetcher`, so both stay on DISCORD_MEDIA_ORIGINS, under the size cap and redirect checks;
the bytes are sniffed and decoded under the pixel cap by the fetch worker either way.

An animated GIF or WebP is asked as WebP without `animated=true`, which the proxy answers with a
still copy of its first frame: the frame the pipeline reads of the original too.

An attachment's proxy link is signed like its CDN link (the same ``ex``/``is``/``hm``), so when
the CDN link is refreshed the proxy link takes the fresh signature (`signed_urls.signed_like`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from retrieval.errors import FetchError
from retrieval.indexing.jobs import ImageRef
from retrieval.indexing.outcomes import PipelineCounters
from retrieval.indexing.signed_urls import signed_like
from retrieval.pictures.fetch import Fetcher
from retrieval.pictures.images import PreprocessSpec, image_size
from retrieval.pictures.media_proxy import ProxyRequest, check_answer, plan_request
from retrieval.pictures.origins import unsigned

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Picture:
    """Downloaded bytes, and whether they are the proxy's resized copy or the original."""

    data: bytes
    resized: bool


class ResizingFetcher:
    """``resized`` False downloads every picture as it is (FETCH_RESIZED=off)."""

    def __init__(
        self,
        fetcher: Fetcher,
        *,
        spec: PreprocessSpec,
        counters: PipelineCounters,
        resized: bool = True,
    ) -> None:
        self._fetcher = fetcher
        self._spec = spec
        self._counters = counters
        self.resized = resized

    def plan(self, ref: ImageRef, url: str) -> ProxyRequest | None:
        """The copy to ask for the picture now downloaded from ``url``; None: the original."""
        if not self.resized or ref.proxy_url is None:
            return None
        proxy_url = ref.proxy_url
        if ref.kind == "attachment":
            proxy_url = signed_like(proxy_url, url)
        return plan_request(
            proxy_url=proxy_url,
            width=ref.width,
            height=ref.height,
            content_type=ref.content_type,
            spec=self._spec,
        )

    async def picture(self, ref: ImageRef, url: str) -> Picture:
        """The picture's bytes: the resized copy when it is asked for and usable, else those of
        ``url``. Raises FetchError only for the original's download."""
        plan = self.plan(ref, url)
        if plan is not None:
            copy = await self._copy(ref, plan)
            if copy is not None:
                self._counters.resized += 1
                self._counters.bytes_downloaded += len(copy)
                return Picture(copy, resized=True)
        data = await self._fetcher.fetch(url, declared_size=ref.size)
        self._counters.bytes_downloaded += len(data)
        return Picture(data, resized=False)

    async def _copy(self, ref: ImageRef, plan: ProxyRequest) -> bytes | None:
        try:
            data = await self._fetcher.fetch(plan.url)
        except FetchError as exc:
            return self._fallback(ref, exc.reason, str(exc))
        assert ref.width is not None and ref.height is not None  # planned only with both
        answer = check_answer(
            asked=(plan.width, plan.height),
            original=(ref.width, ref.height),
            got=image_size(data),
            spec=self._spec,
        )
        if not answer.usable:
            return self._fallback(ref, answer.verdict, f"the copy is {answer.verdict}")
        return data

    def _fallback(self, ref: ImageRef, reason: str, why: str) -> None:
        self._counters.resize_fallbacks[reason] += 1
        log.debug("no resized copy of %s (%s): downloading the original", unsigned(ref.url), why)
        return None
