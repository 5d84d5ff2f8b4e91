"""Discord's side of refreshing expired attachment URLs (`POST /attachments/refresh-urls`),
handed to the indexing pipeline as a plain callable, through a REST-only client of its own
logged in with the bot's token (a bot's and an encoder worker's alike).

Its own client, because discord.py sleeps through a 429 for as long as Discord asks, and the bot's
client serves commands and history reads that must wait it out. This one waits out no rate limit
longer than `REFRESH_WAIT_S` (discord.py's ``max_ratelimit_timeout``): a longer one pauses every
refresh for its Retry-After (retrieval/indexing/signed_urls.py), and the jobs that needed one are
retried after it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

import discord
from discord.http import HTTPClient, Route

from bot.startup import apply_endpoints, logging_in, token_of
from retrieval.config import Settings
from retrieval.errors import FetchError
from retrieval.indexing import REFRESH_WAIT_S, RefreshUrls

log = logging.getLogger(__name__)

NO_TOKEN_FOR_WORKER = (
    "DISCORD_TOKEN is not set: this worker cannot renew expired attachment links (Discord's "
    "links last about 24 hours), so an image queued longer ago than that is dropped as gone. Set "
    "DISCORD_TOKEN to the bot's token (the worker only logs in over REST, it opens no gateway "
    "connection)"
)


def url_refresher(http: HTTPClient) -> RefreshUrls:
    """Refreshes up to 50 URLs per call through a discord.py HTTP client (discord.py has no
    method for this endpoint; its rate limiting still applies). A rate limit the client will not
    wait out is a retryable FetchError with its Retry-After."""

    async def refresh(urls: Sequence[str]) -> dict[str, str]:
        route = Route("POST", "/attachments/refresh-urls")
        try:
            answer = await http.request(route, json={"attachment_urls": list(urls)})
        except discord.RateLimited as exc:
            raise FetchError(
                f"Discord rate-limits link refreshes for {exc.retry_after:.0f} s",
                reason="refresh_rate_limited",
                retryable=True,
                retry_after=exc.retry_after,
            ) from exc
        return {
            item["original"]: item["refreshed"]
            for item in answer.get("refreshed_urls", [])
            if item.get("original") and item.get("refreshed")
        }

    return refresh


@contextlib.asynccontextmanager
async def rest_refresher(settings: Settings) -> AsyncIterator[RefreshUrls]:
    """The refresher, logged in with DISCORD_TOKEN on a client of its own (see the module).

    A token that is malformed raises ConfigError and one Discord refuses raises DiscordRefused,
    with the bot's own sentences."""
    token = token_of(settings)
    apply_endpoints(settings)
    http = HTTPClient(asyncio.get_running_loop(), max_ratelimit_timeout=REFRESH_WAIT_S)
    try:
        async with logging_in():
            await http.static_login(token)
        yield url_refresher(http)
    finally:
        await http.close()


@contextlib.asynccontextmanager
async def worker_refresher(settings: Settings) -> AsyncIterator[RefreshUrls | None]:
    """The refresher of a worker; None (said once) without a token. A worker that cannot renew
    links would lose old images quietly, so a token it has must work."""
    if settings.discord_token is None:
        log.warning(NO_TOKEN_FOR_WORKER)
        yield None
        return
    async with rest_refresher(settings) as refresh:
        log.info("logged in to Discord's REST API: expired attachment links are renewed")
        yield refresh
