"""Signed attachment URLs, which expire: telling when one has, and getting fresh ones.

Discord signs attachment URLs (``?ex=<hex expiry>&is=<hex issued>&hm=<signature>``) and answers
404 once ``ex`` has passed. A job can outlive its URL (the backfill of a big server, an outage
retried for hours, a bot that was down for a day), so such a URL is exchanged for a fresh one
before the download, or after a 404/403 that its expiry did not predict. Only Discord can say
whether the attachment itself is gone: a URL it does not refresh is.

Discord's limits are shared by every download, so the exchange is too: one small refresher sends
``POST /attachments/refresh-urls`` for up to 50 links at a time, off the feed loop, and the
downloads that need a link wait for its answer, never longer than ``wait_s`` (then their job is
retried later). Links whose expiry has passed are asked for as soon as their jobs are claimed,
together. A link Discord refreshes after a 404 tells that every link issued no later than it is
dead too (links expire a fixed time after they are issued, and a re-signing invalidates all the
older ones), so those are refreshed together before their downloads, not one 404 at a time. A
rate limit longer than the client waits pauses every refresh for its Retry-After: the jobs that
need one are retried after it, the others are not held up.

The exchange itself is Discord's; the bot passes it in as a plain callable, so nothing here knows
Discord's client. Link-preview proxy URLs are not signed attachments and are never exchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit, urlunsplit

from retrieval.errors import FetchError
from retrieval.indexing.jobs import ImageRef

log = logging.getLogger(__name__)

# original URL -> refreshed URL, for those Discord refreshed. A rate limit it will not wait out
# is raised as a retryable FetchError with ``retry_after``.
RefreshUrls = Callable[[Sequence[str]], Awaitable[dict[str, str]]]

PER_CALL = 50  # Discord's limit for one refresh-urls request
# The longest a download waits for its fresh link; the refresh client waits out no rate limit
# longer than this either.
WAIT_S = 30.0
# A URL this close to its expiry is refreshed too: it could expire during the download.
_MARGIN_S = 60.0
# Answers are kept this long, so that a link asked for again (a download after its prefetch,
# a gone attachment seen twice) costs no second request; failures are not kept.
_KEEP_S = 600.0


_SIGNED = ("ex", "is", "hm")


def _signature(url: str) -> dict[str, list[str]] | None:
    query = parse_qs(urlsplit(url).query)
    return query if all(query.get(name) for name in _SIGNED) else None


def _hex_time(url: str, name: str) -> float | None:
    query = _signature(url)
    if query is None:
        return None
    try:
        return float(int(query[name][0], 16))
    except ValueError:
        return None


def signed_like(url: str, signed: str) -> str:
    """``url`` with the signature of ``signed`` (its ``ex``, ``is`` and ``hm``) in place of its
    own, everything else kept byte for byte: an attachment's media proxy link is signed like its
    CDN link, so a refreshed CDN link refreshes it too. ``url`` unchanged when either is unsigned.
    """
    if _signature(url) is None or _signature(signed) is None:
        return url
    fresh = dict(pair.partition("=")[::2] for pair in urlsplit(signed).query.split("&"))
    parts = urlsplit(url)
    pairs = parts.query.split("&")
    for i, pair in enumerate(pairs):
        name = pair.partition("=")[0]
        if name in _SIGNED:
            pairs[i] = f"{name}={fresh[name]}"
    return urlunsplit(parts._replace(query="&".join(pairs)))


def expires_at(url: str) -> float | None:
    """The expiry (Unix seconds) of a signed attachment URL; None for any other URL."""
    return _hex_time(url, "ex")


def issued_at(url: str) -> float | None:
    """When a signed attachment URL was issued (Unix seconds); None for any other URL."""
    return _hex_time(url, "is")


class SignedUrls:
    """Fresh URLs for jobs whose signed attachment URL expired (or is about to), asked for in
    batches by one refresher task."""

    def __init__(
        self,
        refresh: RefreshUrls | None = None,
        *,
        per_call: int = PER_CALL,
        wait_s: float = WAIT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Connected by the Discord adapter once its client exists; until then nothing is refreshed.
        self.refresh = refresh
        self.per_call = per_call
        self.wait_s = wait_s
        self._clock = clock
        self._asked: dict[str, tuple[asyncio.Future[str | None], float]] = {}
        self._unsent: list[str] = []
        self._refresher: asyncio.Task[None] | None = None
        # Links issued no later than this are dead: Discord refreshed one such after a 404.
        self._dead_issued = float("-inf")
        self._paused_until = 0.0  # time.monotonic() until which a rate limit holds every refresh
        self._pause: FetchError | None = None

    def applies(self, ref: ImageRef) -> bool:
        """Whether ``ref``'s URL is a signed attachment URL that can be refreshed."""
        return (
            self.refresh is not None
            and ref.kind == "attachment"
            and expires_at(ref.url) is not None
        )

    def expired(self, ref: ImageRef) -> bool:
        if not self.applies(ref):
            return False
        expiry, issued = expires_at(ref.url), issued_at(ref.url)
        if expiry is not None and expiry <= self._clock() + _MARGIN_S:
            return True
        return issued is not None and issued <= self._dead_issued

    def prefetch(self, refs: Iterable[ImageRef]) -> None:
        """Start refreshing the expired links among ``refs`` without waiting: their downloads
        take the answers (see `fresh`)."""
        if self._paused() is not None:
            return  # their downloads are told when the pause ends
        for ref in refs:
            if self.expired(ref):
                self._ask(ref.url)

    async def fresh(self, url: str, *, dead: bool = False) -> str | None:
        """A fresh URL for ``url``, or None when Discord did not refresh it (its attachment is
        gone). ``dead``: the link itself was refused (403/404); once Discord refreshes it, every
        link issued no later is taken for dead too. Raises a retryable FetchError when the
        refresh failed, is paused by a rate limit, or took longer than ``wait_s``."""
        if self.refresh is None:
            # This process's lack, not the link's: another process may refresh it.
            raise FetchError(
                "no way to refresh signed URLs", reason="refresh_unavailable", lasting=False
            )
        if (pause := self._paused()) is not None:
            raise pause
        future = self._ask(url)
        try:
            fresh = await asyncio.wait_for(asyncio.shield(future), self.wait_s)
        except TimeoutError:
            raise FetchError(
                f"Discord gave no fresh link within {self.wait_s:g} s",
                reason="refresh_slow",
                retryable=True,
            ) from None
        if dead and fresh is not None:
            issued = issued_at(url)
            if issued is not None and issued > self._dead_issued:
                self._dead_issued = issued
                log.info(
                    "attachment links issued up to %s have expired; refreshing them together",
                    datetime.fromtimestamp(issued, UTC).isoformat(sep=" "),
                )
        return fresh

    async def close(self) -> None:
        """Stop the refresher; the downloads still waiting are told to try again later."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        closing = FetchError("stopping", reason="refresh_failed", retryable=True)
        for url in [url for url, (answer, _) in self._asked.items() if not answer.done()]:
            self._answer(url, error=closing)

    # -- the refresher ------------------------------------------------------------------------

    def _paused(self) -> FetchError | None:
        left = self._paused_until - time.monotonic()
        if self._pause is None or left <= 0:
            return None
        return FetchError(
            f"{self._pause} ({left:.0f} s left)",
            reason=self._pause.reason,
            retryable=True,
            retry_after=left,
        )

    def _ask(self, url: str) -> asyncio.Future[str | None]:
        asked = self._asked.get(url)
        if asked is not None:
            return asked[0]
        now = time.monotonic()
        for old, (answer, at) in list(self._asked.items()):
            if answer.done() and now - at > _KEEP_S:
                del self._asked[old]
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)
        self._asked[url] = (future, now)
        self._unsent.append(url)
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.create_task(self._run(), name="clip-refresh-urls")
        return future

    async def _run(self) -> None:
        while self._unsent:
            part, self._unsent = self._unsent[: self.per_call], self._unsent[self.per_call :]
            try:
                answered = await self.refresh(part)  # type: ignore[misc]
            except FetchError as exc:
                error = exc
            except Exception as exc:  # whatever the adapter's client raises: try again later
                error = FetchError(
                    f"refreshing {len(part)} signed URLs failed: {exc}",
                    reason="refresh_failed",
                    retryable=True,
                )
            else:
                for url in part:
                    new = answered.get(url)
                    # Discord echoes a URL it cannot refresh: the attachment is gone.
                    self._answer(url, result=new if new and new != url else None)
                continue
            if error.retry_after is not None:
                self._paused_until = time.monotonic() + error.retry_after
                self._pause = error
                log.warning(
                    "refreshing attachment links is paused for %.0f s: %s", error.retry_after, error
                )
                part, self._unsent = part + self._unsent, []
            for url in part:
                self._answer(url, error=error)

    def _answer(
        self, url: str, *, result: str | None = None, error: FetchError | None = None
    ) -> None:
        future = self._asked[url][0]
        if error is not None:
            del self._asked[url]  # asked again next time
            future.set_exception(error)
        else:
            future.set_result(result)


def _retrieved(future: asyncio.Future) -> None:
    # An answer nobody awaited any more (a prefetch, a download that gave up waiting) must not
    # be logged as an exception never retrieved.
    if not future.cancelled():
        future.exception()
