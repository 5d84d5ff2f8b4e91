"""Downloads image bytes: capped in size, bounded in time, polite per host, retried on blips."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict

import aiohttp
import yarl

from retrieval.errors import FetchError

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024


class Fetcher:
    """Owns no session: the caller opens and closes the aiohttp session it passes in."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        max_bytes: int,
        timeout_s: float,
        per_host: int = 4,
        retries: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        self.session = session
        self.max_bytes = max_bytes
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, 10))
        self.retries = retries
        self.backoff_s = backoff_s
        self._per_host: defaultdict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(per_host)
        )

    async def fetch(self, url: str, *, declared_size: int | None = None) -> bytes:
        """The body of ``url``; raises FetchError with a reason after the retries are spent."""
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
                if not exc.retryable or attempt >= self.retries:
                    raise
                attempt += 1
                delay = self.backoff_s * 2 ** (attempt - 1) * (1 + random.random() / 2)
                log.debug("retrying %s in %.2fs (%s)", _safe(url), delay, exc.reason)
                await asyncio.sleep(delay)

    async def _get(self, url: str) -> bytes:
        try:
            async with self.session.get(url, timeout=self.timeout, allow_redirects=True) as resp:
                if resp.status >= 500 or resp.status == 429:
                    raise FetchError(
                        f"HTTP {resp.status}", reason=f"http_{resp.status}", retryable=True
                    )
                if resp.status >= 400:
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


def _safe(url: str) -> str:
    """The URL without its query: Discord's signature parameters don't belong in logs."""
    return str(yarl.URL(url).with_query(None))
