"""End to end, on SQLite and PostgreSQL: permissions at their edges. An overwrite that allows and
denies one bit, the text chat of voice channels, a manager naming a channel they cannot read, a
query picture whose bytes are stored in a private channel, and a link preview whose site swaps
its picture after it was indexed."""

from __future__ import annotations

import aiohttp
import pytest

from bot.cogs.admin import NOT_YOURS
from tests.e2e.test_e2e_public_answers import mod_only, moderated
from tests.fakediscord import Attachment, Overwrite, P
from tests.helpers import find, picture, result_ids, settled
from tests.tinyclip.shapes import draw, png_bytes

pytestmark = pytest.mark.asyncio(loop_scope="module")

EXCLUDE, INCLUDE = ("clipfind", "channels", "exclude"), ("clipfind", "channels", "include")


async def test_a_doubled_bit_on_the_answers_channel_counts_its_viewers(world_on):
    fd, bot = world_on
    guild = fd.add_guild("Doubled")
    mods, guests = guild.add_role("mods"), guild.add_role("guests")
    # Another bot gave the guests an overwrite that allows and denies View Channel: Discord
    # applies the deny, then the allow, so guests view the lounge.
    doubled = Overwrite(guests, allow=P.VIEW_CHANNEL, deny=P.VIEW_CHANNEL)
    lounge = guild.add_text_channel("lounge", overwrites=[*mod_only(guild, mods), doubled])
    secret = guild.add_text_channel("secret", overwrites=mod_only(guild, mods))
    alice, gus = guild.add_member("alice", roles=[mods]), guild.add_member("gus", roles=[guests])
    await fd.wait_ready()
    hidden = await fd.post_message(secret, alice, "", attachments=[picture("red", "star", 1)])
    chat = await fd.post_message(lounge, gus, "", attachments=[picture("blue", "square", 2)])
    await settled(bot, fd)

    mine = await find(fd, guild, lounge, alice, "a red star", count=2)
    assert result_ids(mine) == [hidden.id, chat.id]
    # Posted in the lounge, which gus reads: #secret's image is left out.
    public = await find(fd, guild, lounge, alice, "a red star", count=2, public=True)
    assert result_ids(public) == [chat.id]


async def test_a_voice_channels_chat_is_for_those_who_may_connect(world_on):
    fd, bot = world_on
    guild = fd.add_guild("Voice")
    speakers = guild.add_role("speakers")
    general = guild.add_text_channel("general")
    connect_for = [
        Overwrite(guild.everyone, deny=P.CONNECT),
        Overwrite(speakers, allow=P.CONNECT),
        Overwrite(guild.bot_role, allow=P.CONNECT),
    ]
    hangout = guild.add_voice_channel("hangout", overwrites=connect_for)
    stage = guild.add_voice_channel("stage", stage=True, overwrites=connect_for)
    sam, lee = guild.add_member("sam", roles=[speakers]), guild.add_member("lee")
    await fd.wait_ready()
    in_voice = await fd.post_message(hangout, sam, "", attachments=[picture("green", "circle", 3)])
    on_stage = await fd.post_message(stage, sam, "", attachments=[picture("green", "circle", 4)])
    outside = await fd.post_message(general, sam, "", attachments=[picture("green", "circle", 5)])
    await settled(bot, fd)

    everything = {in_voice.id, on_stage.id, outside.id}
    assert set(result_ids(await find(fd, guild, general, sam, "a green circle", count=3))) == (
        everything
    )
    # lee views both channels but may not Connect: their chats are hidden from him.
    theirs = await find(fd, guild, general, lee, "a green circle", count=3)
    assert result_ids(theirs) == [outside.id]
    # And an answer posted in #general, which lee reads, leaves them out too.
    public = await find(fd, guild, general, sam, "a green circle", count=3, public=True)
    assert result_ids(public) == [outside.id]


async def test_a_manager_acts_only_on_channels_they_can_read(world_on):
    fd, bot = world_on
    guild = fd.add_guild("Managed")
    managers = guild.add_role("managers", P.MANAGE_GUILD)
    mods = guild.add_role("mods")
    general = guild.add_text_channel("general")
    secret = guild.add_text_channel("secret", overwrites=mod_only(guild, mods))
    mia = guild.add_member("mia", roles=[managers])
    boss = guild.add_member("boss", roles=[managers, mods])
    await fd.wait_ready()
    await fd.post_message(secret, boss, "", attachments=[picture("red", "circle", 6)])
    await settled(bot, fd)

    # mia typed #secret's id: Discord resolves it, but she cannot read it.
    asked = await fd.invoke_slash(guild, general, mia, EXCLUDE, {"channel": secret})
    reply = await asked.wait_reply()
    assert reply["content"] == NOT_YOURS.format(channel=secret.mention)
    assert not bot.policy.is_excluded(secret.id)
    assert await bot.store.count(guild_id=guild.id) == 1

    # boss reads it: excluded, its image deleted.
    done = await (
        await fd.invoke_slash(guild, general, boss, EXCLUDE, {"channel": secret})
    ).wait_reply()
    assert "deleted 1 indexed image" in done["content"]
    assert await bot.store.count(guild_id=guild.id) == 0
    # Nor may mia take it back in.
    asked = await fd.invoke_slash(guild, general, mia, INCLUDE, {"channel": secret})
    assert (await asked.wait_reply())["content"] == NOT_YOURS.format(channel=secret.mention)
    assert bot.policy.is_excluded(secret.id)


async def test_a_manager_excludes_a_private_thread_only_from_inside_it(world_on):
    fd, bot = world_on
    guild = fd.add_guild("Private thread")
    managers = guild.add_role("managers", P.MANAGE_GUILD)
    general = guild.add_text_channel("general")
    ivy, joe = guild.add_member("ivy", roles=[managers]), guild.add_member("joe", roles=[managers])
    thread = guild.add_thread(general, "plans", private=True, members=[ivy, guild.bot_member])
    await fd.wait_ready()
    await fd.post_message(thread, ivy, "", attachments=[picture("red", "square", 9)])
    await settled(bot, fd)

    asked = await fd.invoke_slash(guild, general, joe, EXCLUDE, {"channel": thread})
    assert (await asked.wait_reply())["content"] == NOT_YOURS.format(channel=thread.mention)
    assert await bot.store.count(guild_id=guild.id) == 1
    # ivy is in it (Discord is asked, since she may not manage threads): she may.
    asked = await fd.invoke_slash(guild, general, ivy, EXCLUDE, {"channel": thread})
    assert "deleted 1 indexed image" in (await asked.wait_reply())["content"]
    assert f"/channels/{thread.id}/thread-members/{ivy.id}" in {r.path for r in fd.requests}


async def test_a_query_picture_stored_in_a_private_channel_is_encoded_afresh(world_on):
    fd, bot = world_on
    guild, general, secret, mod = moderated(fd, "Same file", "mod")
    ned = guild.add_member("ned")
    await fd.wait_ready()
    drawing = picture("purple", "triangle", 7)
    await fd.post_message(secret, mod, "", attachments=[drawing])
    shown = await fd.post_message(general, mod, "", attachments=[picture("purple", "triangle", 8)])
    await settled(bot, fd)
    encoded = bot.encoder.counters.image_queries

    same = Attachment("mine.png", drawing.data, "image/png")
    asked = await fd.invoke_slash(guild, general, ned, "find", {"query": "this", "image": same})
    assert result_ids(await asked.wait_reply()) == [shown.id]
    # The vector stored for #secret's copy was not used: the picture was encoded, as any other.
    assert bot.encoder.counters.image_queries == encoded + 1


async def test_a_link_previews_result_shows_discords_copy_not_the_site(world_on):
    fd, bot = world_on
    guild = fd.add_guild("Previews")
    general = guild.add_text_channel("general")
    ana = guild.add_member("ana")
    await fd.wait_ready()
    first = png_bytes(draw("orange", "star", size=160, rng=9))
    site = fd.host_external_image("pic.png", first, "image/png")
    posted = await fd.post_message(general, ana, site, embeds=[fd.image_embed(site)])
    await settled(bot, fd)
    # After indexing, the site serves another picture under the same URL.
    swapped = png_bytes(draw("blue", "cross", size=160, rng=10))
    fd.rehost_external_image(site, swapped, "image/png")

    reply = await find(fd, guild, general, ana, "an orange star")
    assert result_ids(reply) == [posted.id]
    shown = reply["embeds"][0]["image"]["url"]
    assert shown == posted.embeds[0]["thumbnail"]["proxy_url"] and shown != site
    async with aiohttp.ClientSession() as http:
        async with http.get(shown) as answer:
            assert await answer.read() == first  # the picture that was indexed
        async with http.get(site) as answer:
            assert await answer.read() == swapped
