"""End to end: pictures in link previews are read from Discord's CDN only. The host a member
linked to (a second loopback server here) never hears from the bot, whatever the preview says."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web

from bot.cogs.search import NO_IMAGE, SIMILAR
from bot.render import NOT_ON_DISCORD
from tests.helpers import find, loopback_server, result_ids, settled
from tests.tinyclip.shapes import draw, png_bytes

pytestmark = pytest.mark.asyncio(loop_scope="module")


class PosterHost:
    """The site a member links to: it serves a picture for any path and notes every request."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.origin = ""
        self.picture = png_bytes(draw("red", "circle", size=160, rng=41))

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(request.path_qs)
        return web.Response(body=self.picture, content_type="image/png")


@pytest_asyncio.fixture(loop_scope="module")
async def poster_host() -> AsyncIterator[PosterHost]:
    host = PosterHost()
    async with loopback_server(host.handle) as port:
        host.origin = f"http://127.0.0.1:{port}"
        yield host


async def test_link_previews_never_reach_the_posters_host(world, poster_host, caplog):
    fd, bot = world
    guild = fd.add_guild("Links")
    general = guild.add_text_channel("general")
    alice = guild.add_member("alice")
    await fd.wait_ready()
    caplog.set_level(logging.WARNING, logger="retrieval.indexing.pipeline")
    refused_before = bot.pipeline.counters.failed["off_discord"]

    # (a) A preview Discord holds no copy of: only the poster's host has the picture.
    unproxied = f"{poster_host.origin}/red-circle.png"
    bare = await fd.post_message(
        general, alice, unproxied, embeds=[fd.image_embed(unproxied, proxied=False)]
    )
    # (b) Discord's proxy answers with a redirect to the poster's host.
    redirected = f"{poster_host.origin}/red-circle-too.png?track=me"
    fd.set_cdn_fault(redirected, redirect_to=redirected)
    bounced = await fd.post_message(general, alice, redirected, embeds=[fd.image_embed(redirected)])
    # (c) An ordinary preview, served by Discord's proxy.
    linked = fd.host_external_image(
        "green-star.png", png_bytes(draw("green", "star", size=160, rng=42)), "image/png"
    )
    shown = await fd.post_message(general, alice, linked, embeds=[fd.image_embed(linked)])
    await settled(bot, fd)

    assert poster_host.requests == []
    assert await bot.store.count(guild_id=guild.id) == 1
    assert result_ids(await find(fd, guild, general, alice, "a green star")) == [shown.id]
    # Refused, and logged like any skip (a channel's history read may meet it a second time).
    assert bot.pipeline.counters.failed["off_discord"] > refused_before
    assert f"of message {bounced.id}" in caplog.text and "off_discord" in caplog.text
    assert "track=me" not in caplog.text  # the redirect is named by its origin only

    # "Find similar images" downloads nothing from the poster's host either.
    asked = await fd.invoke_message_command(guild, general, alice, SIMILAR, bounced)
    assert (await asked.wait_reply(timeout=30))["content"] == NOT_ON_DISCORD
    asked = await fd.invoke_message_command(guild, general, alice, SIMILAR, bare)
    assert (await asked.wait_reply(timeout=30))["content"] == NO_IMAGE
    assert poster_host.requests == []
