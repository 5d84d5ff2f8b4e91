"""Discord's side of refreshing expired attachment URLs (`POST /attachments/refresh-urls`),
handed to the indexing pipeline as a plain callable."""

from __future__ import annotations

from collections.abc import Sequence

import discord
from discord.http import Route

from retrieval.indexing.signed_urls import RefreshUrls


def url_refresher(client: discord.Client) -> RefreshUrls:
    """Refreshes up to 50 URLs per call through the client's HTTP session (discord.py has no
    method for this endpoint; its rate limiting still applies)."""

    async def refresh(urls: Sequence[str]) -> dict[str, str]:
        route = Route("POST", "/attachments/refresh-urls")
        answer = await client.http.request(route, json={"attachment_urls": list(urls)})
        return {
            item["original"]: item["refreshed"]
            for item in answer.get("refreshed_urls", [])
            if item.get("original") and item.get("refreshed")
        }

    return refresh
