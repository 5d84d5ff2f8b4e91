"""Signed attachment URLs, which expire: telling when one has, and getting fresh ones.

Discord signs attachment URLs (``?ex=<hex expiry>&is=<hex issued>&hm=<signature>``) and answers
404 once ``ex`` has passed. A job can outlive its URL (the backfill of a big server, an outage
retried for hours, a bot that was down for a day), so such a URL is exchanged for a fresh one
before the download, or after a 404/403 that its expiry did not predict. Only Discord can say
whether the attachment itself is gone: a URL it does not refresh is.

The exchange itself is Discord's (``POST /attachments/refresh-urls``); the bot passes it in as a
plain callable, so nothing here knows Discord's client. Link-preview proxy URLs are not signed
attachments and are never exchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import parse_qs, urlsplit

from retrieval.errors import FetchError
from retrieval.indexing.jobs import ImageRef

log = logging.getLogger(__name__)

# original URL -> refreshed URL, for those Discord refreshed.
RefreshUrls = Callable[[Sequence[str]], Awaitable[dict[str, str]]]

PER_CALL = 50  # Discord's limit for one refresh-urls request
# A URL this close to its expiry is refreshed too: it could expire during the download.
_MARGIN_S = 60.0


def expires_at(url: str) -> float | None:
    """The expiry (Unix seconds) of a signed attachment URL; None for any other URL."""
    query = parse_qs(urlsplit(url).query)
    if not all(query.get(name) for name in ("ex", "is", "hm")):
        return None
    try:
        return float(int(query["ex"][0], 16))
    except ValueError:
        return None


class SignedUrls:
    """Fresh URLs for jobs whose signed attachment URL expired (or is about to)."""

    def __init__(
        self,
        refresh: RefreshUrls | None = None,
        *,
        per_call: int = PER_CALL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Connected by the Discord adapter once its client exists; until then nothing is refreshed.
        self.refresh = refresh
        self.per_call = per_call
        self._clock = clock

    def applies(self, ref: ImageRef) -> bool:
        """Whether ``ref``'s URL is a signed attachment URL that can be refreshed."""
        return (
            self.refresh is not None
            and ref.kind == "attachment"
            and expires_at(ref.url) is not None
        )

    def expired(self, ref: ImageRef) -> bool:
        expiry = expires_at(ref.url) if self.applies(ref) else None
        return expiry is not None and expiry <= self._clock() + _MARGIN_S

    async def renew(self, urls: Sequence[str]) -> dict[str, str | None]:
        """A fresh URL for each of ``urls``, or None for one Discord did not refresh (its
        attachment is gone). A failed request raises a retryable FetchError."""
        if self.refresh is None:
            raise FetchError("no way to refresh signed URLs", reason="refresh_unavailable")
        wanted = list(dict.fromkeys(urls))
        fresh: dict[str, str | None] = {}
        for start in range(0, len(wanted), self.per_call):
            part = wanted[start : start + self.per_call]
            try:
                answered = await self.refresh(part)
            except Exception as exc:  # whatever the adapter's client raises: try again later
                raise FetchError(
                    f"refreshing {len(part)} signed URLs failed: {exc}",
                    reason="refresh_failed",
                    retryable=True,
                ) from exc
            for url in part:
                new = answered.get(url)
                # Discord echoes a URL it cannot refresh: the attachment is gone.
                fresh[url] = new if new and new != url else None
        return fresh
