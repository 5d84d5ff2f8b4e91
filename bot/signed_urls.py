"""Discord's side of refreshing expired attachment URLs (`POST /attachments/refresh-urls`),
handed to the indexing pipeline as a plain callable: through the bot's own HTTP client, or, for
an encoder worker (no gateway), through a REST-only client logged in with the bot's token."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

from discord.http import HTTPClient, Route

from bot.startup import apply_endpoints, logging_in, token_of
from retrieval.config import Settings
from retrieval.indexing.signed_urls import RefreshUrls

log = logging.getLogger(__name__)

NO_TOKEN_FOR_WORKER = (
    "DISCORD_TOKEN is not set: this worker cannot renew expired attachment links (Discord's "
    "links last about 24 hours), so an image queued longer ago than that is dropped as gone. Set "
    "DISCORD_TOKEN to the bot's token (the worker only logs in over REST, it opens no gateway "
    "connection)"
)


def url_refresher(http: HTTPClient) -> RefreshUrls:
    """Refreshes up to 50 URLs per call through a discord.py HTTP client (discord.py has no
    method for this endpoint; its rate limiting still applies)."""

    async def refresh(urls: Sequence[str]) -> dict[str, str]:
        route = Route("POST", "/attachments/refresh-urls")
        answer = await http.request(route, json={"attachment_urls": list(urls)})
        return {
            item["original"]: item["refreshed"]
            for item in answer.get("refreshed_urls", [])
            if item.get("original") and item.get("refreshed")
        }

    return refresh


@contextlib.asynccontextmanager
async def worker_refresher(settings: Settings) -> AsyncIterator[RefreshUrls | None]:
    """The refresher of a worker, logged in with DISCORD_TOKEN; None (said once) without a token.

    A token that is malformed raises ConfigError and one Discord refuses raises DiscordRefused,
    with the bot's own sentences: a worker that cannot renew links would lose old images quietly.
    """
    if settings.discord_token is None:
        log.warning(NO_TOKEN_FOR_WORKER)
        yield None
        return
    token = token_of(settings)
    apply_endpoints(settings)
    http = HTTPClient(asyncio.get_running_loop())
    try:
        async with logging_in():
            await http.static_login(token)
        log.info("logged in to Discord's REST API: expired attachment links are renewed")
        yield url_refresher(http)
    finally:
        await http.close()
