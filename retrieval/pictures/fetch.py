"""Downloads image bytes: only from allowed origins, capped in size, bounded in time, polite per
host, retried on blips.

A host that answers 429 (or 5xx) with Retry-After is left alone for that long by every download
of the process, not only by the one that asked: the others fail at once as if it had answered
them, and their jobs are retried once the pause is over.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict

import aiohttp
import yarl

from retrieval.errors import FetchError
from retrieval.pictures.origins import MediaOrigins, origin_of, unsigned

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class Fetcher:
    """Owns no session: the caller opens and closes the aiohttp session it passes in."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        allowed: MediaOrigins,
        max_bytes: int,
        timeout_s: float,
        per_host: int = 4,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_redirects: int = 3,
    ) -> None:
        self.session = session
        self.allowed = allowed
        self.max_redirects = max_redirects
        self.max_bytes = max_bytes
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, 10))
        self.retries = retries
        self.backoff_s = backoff_s
        self._per_host: defaultdict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(per_host)
        )
        # host:port -> (time.monotonic() when its Retry-After ends, the answer that asked for it)
        self._paused: dict[str, tuple[float, FetchError]] = {}

    async def fetch(self, url: str, *, declared_size: int | None = None) -> bytes:
        """The body of ``url``; raises FetchError with a reason after the retries are spent.

        A URL off the allowed origins is refused before any connection (reason ``off_discord``).
        """
        self._check_origin(url, what=origin_of(url))
        if declared_size is not None and declared_size > self.max_bytes:
            raise FetchError(
                f"{declared_size} bytes is over the {self.max_bytes}-byte cap", reason="too_large"
            )
        host = yarl.URL(url).host or ""
        attempt = 0
        while True:
            try:
                async with self._per_host[host]:
                    return await self._get(url)
            except FetchError as exc:
                # A server that said when to come back is asked then, from the jobs table.
                if not exc.retryable or attempt >= self.retries or exc.retry_after is not None:
                    raise
                attempt += 1
                delay = self.backoff_s * 2 ** (attempt - 1) * (1 + random.random() / 2)
                log.debug("retrying %s in %.2fs (%s)", unsigned(url), delay, exc.reason)
                await asyncio.sleep(delay)

    def _check_origin(self, url: str | yarl.URL, *, what: str) -> None:
        # Permanent: retrying would only knock on the same door again.
        if not self.allowed.allows(url):
            raise FetchError(
                f"{what} is off the allowed media origins (DISCORD_MEDIA_ORIGINS)",
                reason="off_discord",
            )

    async def _get(self, url: str) -> bytes:
        # Redirects are followed here, not by aiohttp, so that each hop is checked before the
        # connection: a proxy that redirects to the poster's host must not lead the bot there.
        target = yarl.URL(url)
        for _hop in range(self.max_redirects + 1):
            got = await self._get_once(target)
            if isinstance(got, bytes):
                return got
            target = got
        raise FetchError(f"more than {self.max_redirects} redirects", reason="too_many_redirects")

    async def _get_once(self, url: yarl.URL) -> bytes | yarl.URL:
        """The body, or the URL a redirect points to (already checked against the origins)."""
        host = f"{url.host}:{url.port}"  # a server, whatever its paths
        self._check_paused(host)
        try:
            return await self._request(url)
        except FetchError as exc:
            if exc.retry_after:
                self._pause(host, exc)
            raise

    def _check_paused(self, host: str) -> None:
        paused = self._paused.get(host)
        if paused is None:
            return
        until, cause = paused
        left = until - time.monotonic()
        if left <= 0:
            del self._paused[host]
            return
        raise FetchError(
            f"{host} asked for a pause ({cause}); {left:.1f} s left",
            reason=cause.reason,
            retryable=True,
            retry_after=left,
        )

    def _pause(self, host: str, cause: FetchError) -> None:
        now = time.monotonic()
        until = now + (cause.retry_after or 0.0)
        current = self._paused.get(host, (0.0, cause))[0]
        if until <= current:
            return
        if current <= now:
            log.warning(
                "%s answered %s with Retry-After %.0f s: no download from it until then",
                host,
                cause,
                cause.retry_after,
            )
        self._paused[host] = (until, cause)

    async def _request(self, url: yarl.URL) -> bytes | yarl.URL:
        try:
            async with self.session.get(url, timeout=self.timeout, allow_redirects=False) as resp:
                if resp.status in _REDIRECTS:
                    return self._redirect_target(url, resp)
                if resp.status >= 500 or resp.status == 429:
                    raise FetchError(
                        f"HTTP {resp.status}",
                        reason=f"http_{resp.status}",
                        retryable=True,
                        retry_after=_retry_after(resp.headers.get("Retry-After")),
                    )
                if resp.status >= 300:  # 4xx, and 3xx that are no redirect (no cache here)
                    raise FetchError(f"HTTP {resp.status}", reason=f"http_{resp.status}")
                if resp.content_length is not None and resp.content_length > self.max_bytes:
                    raise FetchError(
                        f"Content-Length {resp.content_length} is over the cap of {self.max_bytes}",
                        reason="too_large",
                    )
                return await self._read_capped(resp)
        except TimeoutError as exc:
            raise FetchError("timed out", reason="timeout", retryable=True) from exc
        except aiohttp.ClientPayloadError as exc:
            raise FetchError(f"broken response: {exc}", reason="broken", retryable=True) from exc
        except aiohttp.InvalidURL as exc:
            raise FetchError(f"invalid URL: {exc}", reason="invalid_url") from exc
        except aiohttp.ClientError as exc:
            raise FetchError(f"unreachable: {exc}", reason="unreachable", retryable=True) from exc

    def _redirect_target(self, url: yarl.URL, resp: aiohttp.ClientResponse) -> yarl.URL:
        location = resp.headers.get("Location")
        if not location:
            raise FetchError(f"HTTP {resp.status} without a Location", reason=f"http_{resp.status}")
        try:
            target = url.join(yarl.URL(location))
        except ValueError as exc:
            raise FetchError(f"bad redirect: {exc}", reason="invalid_url") from exc
        self._check_origin(target, what=f"a redirect to {origin_of(target)}")
        return target

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        # A server can lie about (or omit) Content-Length: count what actually arrives.
        body = bytearray()
        async for chunk in resp.content.iter_chunked(_CHUNK):
            body += chunk
            if len(body) > self.max_bytes:
                raise FetchError(
                    f"body grew past the {self.max_bytes}-byte cap", reason="too_large"
                )
        return bytes(body)


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is not used by Discord's CDN)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
