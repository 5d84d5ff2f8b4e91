"""End to end: `/find` shows a member only what they may read now, and only what still exists.

Each test builds its own guild in one running bot, posts pictures of distinct captions, and
checks what the member sees in the reply and what remains in the store.
"""

from __future__ import annotations

import pytest

from bot.cogs.search import NOTHING_INDEXED
from retrieval.store import SearchScope
from tests.fakediscord import FakeDiscord, Overwrite, P
from tests.helpers import (
    bot_settings,
    eventually,
    find,
    message_fetches,
    picture,
    result_ids,
    running_bot,
    settled,
)
from tests.tinyclip.shapes import draw, png_bytes

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def stored_messages(bot, guild_id: int) -> set[int]:
    """Message ids with vectors in the store (an unfiltered search over the whole guild)."""
    scope = SearchScope(guild_id=guild_id, model_id=bot.encoder.model_id)
    hits = await bot.store.search(await bot.encoder.encode_text("a picture"), scope=scope, k=1000)
    return {h.message_id for h in hits}


def linked(fd: FakeDiscord, colour: str, shape: str, seed: int) -> str:
    """A picture on another website, to post as a link that Discord previews."""
    data = png_bytes(draw(colour, shape, size=160, rng=seed))
    return fd.host_external_image(f"{colour}-{shape}.png", data, "image/png")


async def test_roles_and_a_private_channel_decide_at_query_time(world):
    fd, bot = world
    guild = fd.add_guild("Roles")
    mods = guild.add_role("mods")
    general = guild.add_text_channel("general")
    staff = guild.add_text_channel(
        "staff",
        overwrites=[
            Overwrite(guild.everyone, deny=P.VIEW_CHANNEL),
            Overwrite(mods, allow=P.VIEW_CHANNEL),
            Overwrite(guild.bot_role, allow=P.VIEW_CHANNEL),
        ],
    )
    alice, bob = guild.add_member("alice", roles=[mods]), guild.add_member("bob")
    await fd.wait_ready()
    secret = await fd.post_message(staff, alice, "", attachments=[picture("red", "circle", 1)])
    public = await fd.post_message(general, bob, "", attachments=[picture("blue", "square", 2)])
    await settled(bot, fd)

    assert result_ids(await find(fd, guild, general, alice, "a red circle", count=2)) == [
        secret.id,
        public.id,
    ]
    assert result_ids(await find(fd, guild, general, bob, "a red circle", count=2)) == [public.id]

    # Roles are read when the member asks, not when the image was indexed.
    await fd.update_member_roles(guild, alice, [])
    assert result_ids(await find(fd, guild, general, alice, "a red circle")) == [public.id]
    await fd.update_member_roles(guild, bob, [mods])
    assert result_ids(await find(fd, guild, general, bob, "a red circle"))[0] == secret.id
    assert await stored_messages(bot, guild.id) == {secret.id, public.id}


async def test_an_overwrite_denying_read_message_history_hides_the_channel(world):
    fd, bot = world
    guild = fd.add_guild("History")
    newcomers = guild.add_role("newcomers")
    general = guild.add_text_channel("general")
    archive = guild.add_text_channel(
        "archive", overwrites=[Overwrite(newcomers, deny=P.READ_MESSAGE_HISTORY)]
    )
    carol, dave = guild.add_member("carol", roles=[newcomers]), guild.add_member("dave")
    await fd.wait_ready()
    old = await fd.post_message(archive, dave, "", attachments=[picture("green", "star", 3)])
    await settled(bot, fd)

    reply = await find(fd, guild, general, carol, "a green star")
    assert reply["content"] == NOTHING_INDEXED and not reply["embeds"]
    assert result_ids(await find(fd, guild, general, dave, "a green star")) == [old.id]
    assert await stored_messages(bot, guild.id) == {old.id}


async def test_private_thread_member_non_member_and_thread_manager(world):
    fd, bot = world
    guild = fd.add_guild("Threads")
    managers = guild.add_role("thread managers", permissions=P.MANAGE_THREADS)
    general = guild.add_text_channel("general")
    erin, frank = guild.add_member("erin"), guild.add_member("frank", roles=[managers])
    grace = guild.add_member("grace")
    await fd.wait_ready()
    thread = guild.add_thread(general, "plans", private=True, members=[grace, guild.bot_member])
    inside = await fd.post_message(thread, grace, "", attachments=[picture("purple", "cross", 4)])
    await settled(bot, fd)

    before = message_fetches(fd)
    assert result_ids(await find(fd, guild, general, grace, "a purple cross")) == [inside.id]
    assert result_ids(await find(fd, guild, general, frank, "a purple cross")) == [inside.id]
    reply = await find(fd, guild, general, erin, "a purple cross")
    assert reply["content"] == NOTHING_INDEXED
    asked = {r.path for r in fd.requests if "/thread-members/" in r.path}
    assert asked == {f"/channels/{thread.id}/thread-members/{m.id}" for m in (grace, erin)}
    # The bot saw the message arrive, so confirming it needed no REST read.
    assert message_fetches(fd) == before

    # Membership is looked up over REST (the bot hears only of its own thread memberships).
    heidi = guild.add_member("heidi")
    await fd.add_thread_members(thread, [heidi])
    assert result_ids(await find(fd, guild, general, heidi, "a purple cross")) == [inside.id]
    assert await stored_messages(bot, guild.id) == {inside.id}


async def test_a_repost_in_a_private_thread_is_not_counted_for_outsiders(world):
    fd, bot = world
    guild = fd.add_guild("Reposted")
    general = guild.add_text_channel("general")
    insider, outsider = guild.add_member("insider"), guild.add_member("outsider")
    await fd.wait_ready()
    thread = guild.add_thread(general, "inner", private=True, members=[insider, guild.bot_member])
    await fd.flush()
    same = picture("green", "triangle", 11)
    public = await fd.post_message(general, insider, "", attachments=[same])
    await fd.post_message(thread, insider, "", attachments=[same])
    await settled(bot, fd)

    # Oldest first puts the public copy in front, the thread's copy behind it as a repost.
    seen_inside = await find(fd, guild, general, insider, "a green triangle", sort="oldest")
    assert result_ids(seen_inside) == [public.id]
    assert "+1 repost" in seen_inside["embeds"][0]["description"]
    seen_outside = await find(fd, guild, general, outsider, "a green triangle", sort="oldest")
    assert result_ids(seen_outside) == [public.id]
    assert "repost" not in seen_outside["embeds"][0]["description"]


async def test_archived_threads_are_resolved_not_hidden(world):
    fd, bot = world
    guild = fd.add_guild("Archive")
    general = guild.add_text_channel("general")
    ivan, judy = guild.add_member("ivan"), guild.add_member("judy")
    await fd.wait_ready()
    public = guild.add_thread(general, "old news", members=[ivan])
    private = guild.add_thread(general, "old plans", private=True, members=[ivan, guild.bot_member])
    await fd.wait_ready()
    shown = await fd.post_message(public, ivan, "", attachments=[picture("orange", "square", 5)])
    kept = await fd.post_message(private, ivan, "", attachments=[picture("yellow", "star", 6)])
    await settled(bot, fd)
    await fd.archive_thread(public)
    await fd.archive_thread(private)
    await settled(bot, fd)
    assert guild.id in {g.id for g in bot.guilds}
    assert bot.get_guild(guild.id).get_thread(public.id) is None, "archived threads leave the cache"

    assert result_ids(await find(fd, guild, general, judy, "an orange square")) == [shown.id]
    looked_up = {r.path for r in fd.requests if r.method == "GET"}
    assert {f"/channels/{public.id}", f"/channels/{private.id}"} <= looked_up
    assert result_ids(await find(fd, guild, general, ivan, "a yellow star"))[0] == kept.id
    assert kept.id not in result_ids(await find(fd, guild, general, judy, "a yellow star"))


async def test_age_restricted_images_only_when_asked_in_an_age_restricted_channel(world):
    fd, bot = world
    guild = fd.add_guild("Ages")
    general = guild.add_text_channel("general")
    late = guild.add_text_channel("late-night", nsfw=True)
    kim = guild.add_member("kim")
    await fd.wait_ready()
    restricted = await fd.post_message(late, kim, "", attachments=[picture("red", "star", 7)])
    await settled(bot, fd)

    reply = await find(fd, guild, general, kim, "a red star")
    assert reply["content"] == NOTHING_INDEXED
    assert result_ids(await find(fd, guild, late, kim, "a red star")) == [restricted.id]
    assert await stored_messages(bot, guild.id) == {restricted.id}


async def test_results_never_cross_guilds(world):
    fd, bot = world
    home, away = fd.add_guild("Home"), fd.add_guild("Away")
    home_general, away_general = home.add_text_channel("general"), away.add_text_channel("general")
    leo = home.add_member("leo")
    away.add_existing_user(leo.user)
    await fd.wait_ready()
    elsewhere = await fd.post_message(
        away_general, leo, "", attachments=[picture("green", "circle", 8)]
    )
    await settled(bot, fd)

    reply = await find(fd, home, home_general, leo, "a green circle")
    assert not reply["embeds"] and elsewhere.id not in result_ids(reply)
    assert result_ids(await find(fd, away, away_general, leo, "a green circle")) == [elsewhere.id]


async def test_expired_links_change_nothing_the_embed_url_is_unsigned(world):
    fd, bot = world
    guild = fd.add_guild("Links")
    general = guild.add_text_channel("general")
    mia = guild.add_member("mia")
    await fd.wait_ready()
    posted = await fd.post_message(general, mia, "", attachments=[picture("blue", "circle", 9)])
    await settled(bot, fd)
    fd.expire_attachment_links()

    reply = await find(fd, guild, general, mia, "a blue circle")
    assert result_ids(reply) == [posted.id]
    url = reply["embeds"][0]["image"]["url"]
    assert "?" not in url and url == posted.attachments[0].url.split("?")[0]
    assert await stored_messages(bot, guild.id) == {posted.id}


async def test_answers_are_ephemeral_unless_public(world):
    fd, bot = world
    guild = fd.add_guild("Quiet")
    general = guild.add_text_channel("general")
    noor = guild.add_member("noor")
    await fd.wait_ready()
    await fd.post_message(general, noor, "", attachments=[picture("yellow", "circle", 10)])
    await settled(bot, fd)

    def answers_in_channel() -> list[dict]:
        return [m for m in fd.messages_in(general) if m["author"]["id"] == str(bot.user.id)]

    private = await find(fd, guild, general, noor, "a yellow circle")
    assert private["flags"] & 64 and result_ids(private)
    assert answers_in_channel() == []  # nobody else can read it in the channel
    public = await find(fd, guild, general, noor, "a yellow circle", public=True)
    assert not public["flags"] & 64
    assert [result_ids(m) for m in answers_in_channel()] == [result_ids(private)]


async def test_a_preview_hidden_while_its_picture_was_indexed_is_dropped(world):
    fd, bot = world
    guild = fd.add_guild("Hidden preview")
    general = guild.add_text_channel("general")
    quinn = guild.add_member("quinn")
    await fd.wait_ready()
    kept = await fd.post_message(general, quinn, "", attachments=[picture("red", "cross", 60)])
    url = linked(fd, "red", "cross", 61)
    download = fd.set_cdn_fault(url, delay=1.0)
    hidden = await fd.post_message(general, quinn, url, embeds=[fd.image_embed(url)])

    async def downloading() -> bool:
        return download.served > 0

    # Hidden while its picture downloads: the edit deletes its queued job with it, so the
    # picture downloaded meanwhile is never stored.
    await eventually(downloading)
    await fd.suppress_embeds(hidden)
    await settled(bot, fd)
    assert await stored_messages(bot, guild.id) == {kept.id}

    before = message_fetches(fd)
    shown = result_ids(await find(fd, guild, general, quinn, "a red cross", count=2))
    assert shown == [kept.id]
    assert message_fetches(fd) == before, "the bot's cache holds the edit it heard"
    assert await stored_messages(bot, guild.id) == {kept.id}


# Tests that start a bot of their own come last: starting one points discord.py (a global
# setting) at its own stand-in, away from the module's shared world.
async def test_deleted_while_offline_is_dropped_and_the_answer_still_fills(tmp_path):
    async with FakeDiscord() as fd:
        settings = bot_settings(fd, tmp_path)
        guild = fd.add_guild("Offline")
        general = guild.add_text_channel("general")
        olga = guild.add_member("olga")
        pictures = [("red", "circle"), ("red", "circle"), ("red", "circle"), ("blue", "star")]
        pictures += [("green", "square"), ("yellow", "cross"), ("purple", "triangle")]
        async with running_bot(settings, fd) as bot:
            posted = [
                await fd.post_message(general, olga, "", attachments=[picture(c, s, 20 + i)])
                for i, (c, s) in enumerate(pictures)
            ]
            await settled(bot, fd)
            first = result_ids(await find(fd, guild, general, olga, "a red circle", count=3))
        assert sorted(first) == sorted(m.id for m in posted[:3])

        # While the bot is away: two red circles are deleted, one loses its picture in an edit.
        await fd.delete_message(posted[0], dispatch=False)
        await fd.delete_message(posted[1], dispatch=False)
        await fd.edit_message(posted[2], attachments=[], dispatch=False)
        async with running_bot(settings, fd) as bot:
            before = message_fetches(fd)
            shown = result_ids(await find(fd, guild, general, olga, "a red circle", count=3))
            fetched = message_fetches(fd) - before
            remaining = await stored_messages(bot, guild.id)

    gone = {m.id for m in posted[:3]}
    assert len(shown) == 3 and not gone & set(shown)
    assert remaining == {m.id for m in posted[3:]}
    # Every result was confirmed over REST (the restarted bot's cache is empty), within bounds.
    assert 6 <= fetched <= 3 * 4


async def test_previews_hidden_or_edited_out_while_offline_are_dropped(tmp_path):
    async with FakeDiscord() as fd:
        settings = bot_settings(fd, tmp_path)
        guild = fd.add_guild("Previews")
        general = guild.add_text_channel("general")
        pia = guild.add_member("pia")
        pictures = [("red", "circle"), ("red", "circle"), ("red", "circle"), ("blue", "star")]
        pictures += [("green", "square"), ("yellow", "cross"), ("purple", "triangle")]
        async with running_bot(settings, fd) as bot:
            posted = []
            for i, (colour, shape) in enumerate(pictures):
                url = linked(fd, colour, shape, 40 + i)
                embeds = [fd.image_embed(url)]
                posted.append(await fd.post_message(general, pia, url, embeds=embeds))
            await settled(bot, fd)
            first = result_ids(await find(fd, guild, general, pia, "a red circle", count=3))
        assert sorted(first) == sorted(m.id for m in posted[:3])

        # While the bot is away: one preview is hidden, one edited out, one replaced by another.
        await fd.suppress_embeds(posted[0], dispatch=False)
        await fd.edit_message(posted[1], embeds=[], dispatch=False)
        other = linked(fd, "orange", "star", 50)
        await fd.edit_message(posted[2], embeds=[fd.image_embed(other, rich=True)], dispatch=False)
        async with running_bot(settings, fd) as bot:
            shown = result_ids(await find(fd, guild, general, pia, "a red circle", count=3))
            remaining = await stored_messages(bot, guild.id)

    changed = {m.id for m in posted[:3]}
    assert len(shown) == 3 and not changed & set(shown)
    assert remaining == {m.id for m in posted[3:]}
