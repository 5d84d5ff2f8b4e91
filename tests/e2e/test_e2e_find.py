"""End to end: members post images in Discord, the real bot indexes them, `/find` finds them."""

from __future__ import annotations

import gc
import logging
import re

import pytest

from bot.app import INTENT_REFUSED, run
from bot.cogs.search import NOTHING_INDEXED
from tests.fakediscord import FakeDiscord, Overwrite, P
from tests.helpers import JUMP, bot_settings, count_is, picture, settled
from tests.tinyclip.shapes import draw, png_bytes

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def find(fd, guild, channel, member, query: str, **options) -> dict:
    interaction = await fd.invoke_slash(guild, channel, member, "find", {"query": query, **options})
    reply = await interaction.wait_reply(timeout=30)
    assert interaction.deferred, "/find must defer before the model runs"
    return reply


async def test_find_is_synced_with_described_options(world):
    fd, _ = world
    (find_command,) = [c for c in fd.synced_commands[None] if c["name"] == "find"]
    assert find_command["description"].startswith("Search this server's images")
    options = {o["name"]: o for o in find_command["options"]}
    assert options["query"]["required"] and options["query"]["max_length"] == 300
    assert (options["count"]["min_value"], options["count"]["max_value"]) == (1, 10)
    # Real sentences, not discord.py's "…" placeholder for an undocumented parameter.
    assert options["query"]["description"].startswith("What the picture shows")
    assert all(len(o["description"]) > 10 for o in options.values())


async def test_start_up_objects_are_out_of_the_collectors_sight(world):
    # torch, open_clip and discord.py leave some 440,000 objects: a full collection scanning
    # them stops the event loop for about 0.3 s (benchmarks/RESULTS.md, event-loop lag).
    assert gc.get_freeze_count() > 100_000


async def test_images_from_two_channels_are_indexed_and_found(world):
    fd, bot = world
    guild = fd.add_guild("Shapes club")
    memes = guild.add_text_channel("memes")
    photos = guild.add_text_channel("photos")
    alice, bob = guild.add_member("alice"), guild.add_member("bob")
    await fd.wait_ready()
    circle = await fd.post_message(memes, alice, "look", attachments=[picture("red", "circle", 1)])
    await fd.post_message(photos, bob, "", attachments=[picture("blue", "square", 2, jpeg=True)])
    star = await fd.post_message(
        memes, bob, "two", attachments=[picture("green", "star", 3), picture("yellow", "cross", 4)]
    )
    linked = fd.host_external_image(
        "tri.png", png_bytes(draw("purple", "triangle", size=160, rng=5)), "image/png"
    )
    triangle = await fd.post_message(photos, alice, linked, embeds=[fd.image_embed(linked)])
    await settled(bot, fd)
    assert await bot.store.count(guild_id=guild.id) == 5

    reply = await find(fd, guild, memes, bob, "a red circle", count=3)
    assert reply["flags"] & 64, "answers are only for the member who asked"
    assert "a red circle" in reply["content"]
    first = reply["embeds"][0]
    assert first["image"]["url"] == circle.attachments[0].url.split("?")[0]
    assert JUMP.search(first["description"]).groups() == tuple(
        str(i) for i in (guild.id, memes.id, circle.id)
    )
    assert re.search(r"Similarity \*\*0\.\d\d\*\*", first["description"])
    assert f"<@{alice.id}>" in first["description"] and f"<#{memes.id}>" in first["description"]
    assert len(reply["embeds"]) == 3

    reply = await find(fd, guild, memes, bob, "a purple triangle", count=1)
    (only,) = reply["embeds"]
    # Discord's proxied copy of the picture, not the linked site's URL.
    assert only["image"]["url"] == triangle.embeds[0]["thumbnail"]["proxy_url"]
    assert JUMP.search(only["description"]).group(3) == str(triangle.id)

    reply = await find(fd, guild, memes, alice, "a yellow cross")
    assert JUMP.search(reply["embeds"][0]["description"]).group(3) == str(star.id)
    assert reply["embeds"][0]["image"]["url"].endswith("yellow-cross.png")


async def test_redelivered_message_is_not_indexed_twice(world):
    fd, bot = world
    guild = fd.add_guild("Echo")
    general = guild.add_text_channel("general")
    carol = guild.add_member("carol")
    await fd.wait_ready()
    message = await fd.post_message(general, carol, "", attachments=[picture("orange", "star", 6)])
    await settled(bot, fd)
    fd.dispatch_message("MESSAGE_CREATE", message)  # Discord may deliver an event again
    fd.dispatch_message("MESSAGE_UPDATE", message)
    await settled(bot, fd)
    assert await bot.store.count(guild_id=guild.id) == 1
    path = f"/attachments/{general.id}/{message.attachments[0].id}/"
    assert sum(hit.startswith(path) for hit, _ in fd.cdn.hits) == 1  # not even downloaded again


async def test_unfurled_link_is_indexed_from_the_update(world):
    fd, bot = world
    guild = fd.add_guild("Links")
    general = guild.add_text_channel("general")
    dave = guild.add_member("dave")
    await fd.wait_ready()
    url = fd.host_external_image(
        "late.png", png_bytes(draw("blue", "cross", size=160, rng=7)), "image/png"
    )
    await fd.post_message(general, dave, url, embeds=[fd.image_embed(url)], delayed_embeds=True)
    await settled(bot, fd)
    await count_is(bot, guild.id, 1)


async def test_empty_guild_and_no_visible_match_get_friendly_answers(world):
    fd, bot = world
    guild = fd.add_guild("Quiet")
    general = guild.add_text_channel("general")
    eve = guild.add_member("eve")
    await fd.wait_ready()
    reply = await find(fd, guild, general, eve, "a red circle")
    assert reply["content"] == NOTHING_INDEXED and not reply["embeds"]

    frank = guild.add_member("frank")
    # Only frank (and the bot's role) may see #secret.
    secret = guild.add_text_channel(
        "secret",
        overwrites=[
            Overwrite(guild.everyone, deny=P.VIEW_CHANNEL),
            Overwrite(frank, allow=P.VIEW_CHANNEL),
            Overwrite(guild.bot_role, allow=P.VIEW_CHANNEL),
        ],
    )
    await fd.post_message(secret, frank, "", attachments=[picture("red", "circle", 8)])
    await settled(bot, fd)
    assert await bot.store.count(guild_id=guild.id) == 1
    # eve gets the very answer she got before: what #secret holds is not hers to learn.
    reply = await find(fd, guild, general, eve, "a red circle")
    assert reply["content"] == NOTHING_INDEXED and not reply["embeds"]
    reply = await find(fd, guild, general, frank, "a red circle")
    assert len(reply["embeds"]) == 1


async def test_bot_authors_are_skipped(world):
    fd, bot = world
    guild = fd.add_guild("Bots")
    general = guild.add_text_channel("general")
    robot = guild.add_member("robot", bot=True)
    await fd.wait_ready()
    await fd.post_message(general, robot, "", attachments=[picture("green", "circle", 9)])
    await settled(bot, fd)
    assert await bot.store.count(guild_id=guild.id) == 0


async def test_refused_message_content_intent_stops_with_a_clear_sentence(tmp_path, caplog):
    caplog.set_level(logging.CRITICAL)
    async with FakeDiscord(message_content_enabled=False) as fd:
        status = await run(bot_settings(fd, tmp_path))
    assert status == 2
    assert INTENT_REFUSED in caplog.text
