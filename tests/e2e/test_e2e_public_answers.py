"""End to end: an answer shows only what its whole audience may see, page after page.

A public answer is read by everyone who can view its channel, so it leaves out images from
channels some of them cannot read, whoever asked. Every page turn asks again what the member
pressing may see, and page turns are taken one at a time.
"""

from __future__ import annotations

import pytest

from bot.cogs.search import NO_MATCH_PUBLIC
from bot.views import NOTHING_LEFT
from retrieval.store import SearchScope
from tests.fakediscord import Overwrite, P
from tests.helpers import buttons, eventually, find, picture, result_ids, settled

pytestmark = pytest.mark.asyncio(loop_scope="module")


def moderated(fd, name: str, member: str):
    """A server with #general for everyone and #secret for its mods, ``member`` among them."""
    guild = fd.add_guild(name)
    mods = guild.add_role("mods")
    general = guild.add_text_channel("general")
    secret = guild.add_text_channel("secret", overwrites=mod_only(guild, mods))
    mod = guild.add_member(member, roles=[mods])
    return guild, general, secret, mod


def mod_only(guild, mods):
    return [
        Overwrite(guild.everyone, deny=P.VIEW_CHANNEL),
        Overwrite(mods, allow=P.VIEW_CHANNEL),
        Overwrite(guild.bot_role, allow=P.VIEW_CHANNEL),
    ]


async def test_a_public_answer_leaves_out_what_some_readers_cannot_see(world):
    fd, bot = world
    guild = fd.add_guild("Moderated")
    mods = guild.add_role("mods")
    general = guild.add_text_channel("general")
    secret = guild.add_text_channel("secret", overwrites=mod_only(guild, mods))
    alice, bob = guild.add_member("alice", roles=[mods]), guild.add_member("bob")
    await fd.wait_ready()
    hidden = await fd.post_message(secret, alice, "", attachments=[picture("red", "star", 1)])
    shown = await fd.post_message(general, bob, "", attachments=[picture("blue", "square", 2)])
    await settled(bot, fd)

    # Only alice sees her own answer: #secret's image is there.
    mine = await find(fd, guild, general, alice, "a red star", count=2)
    assert result_ids(mine) == [hidden.id, shown.id] and mine["flags"] & 64

    # Posted in #general for everyone, bob included: #secret's image, channel and link are not.
    public = await find(fd, guild, general, alice, "a red star", count=2, public=True)
    assert not public["flags"] & 64
    assert result_ids(public) == [shown.id]
    posted = [m for m in fd.messages_in(general) if m["embeds"]]
    assert [result_ids(m) for m in posted] == [[shown.id]]
    assert str(secret.id) not in repr(posted) and str(hidden.id) not in repr(posted)

    # In #secret itself, every reader is a moderator: both images may be shown there.
    inside = await find(fd, guild, secret, alice, "a red star", count=2, public=True)
    assert result_ids(inside) == [hidden.id, shown.id]

    # Nothing left to show: one sentence, whether or not the asker could see matches.
    only_alice = await find(fd, guild, general, alice, "a red star", author=alice, public=True)
    only_bob = await find(fd, guild, general, bob, "a red star", author=alice, public=True)
    assert only_alice["content"] == only_bob["content"] == NO_MATCH_PUBLIC
    assert not only_alice["embeds"] and not only_bob["embeds"]


async def test_a_role_denied_in_the_source_keeps_it_out_of_public_answers(world):
    fd, bot = world
    guild = fd.add_guild("Muted")
    muted = guild.add_role("muted")
    general = guild.add_text_channel("general")
    art = guild.add_text_channel("art", overwrites=[Overwrite(muted, deny=P.READ_MESSAGE_HISTORY)])
    cara = guild.add_member("cara")
    await fd.wait_ready()
    drawing = await fd.post_message(art, cara, "", attachments=[picture("green", "circle", 3)])
    await settled(bot, fd)

    # cara is not muted, but a muted member reading #general could not read #art's history.
    assert result_ids(await find(fd, guild, general, cara, "a green circle")) == [drawing.id]
    public = await find(fd, guild, general, cara, "a green circle", public=True)
    assert public["content"] == NO_MATCH_PUBLIC and not public["embeds"]
    # In #art itself the muted can view but not read history: still left out.
    in_art = await find(fd, guild, art, cara, "a green circle", public=True)
    assert in_art["content"] == NO_MATCH_PUBLIC


async def test_paging_a_public_answer_follows_the_same_rule(world):
    fd, bot = world
    guild, general, secret, dana = moderated(fd, "Public pages", "dana")
    await fd.wait_ready()
    outside, inside = set(), set()
    for i in range(4):
        outside.add(
            (
                await fd.post_message(
                    general, dana, "", attachments=[picture("red", "circle", 10 + i)]
                )
            ).id
        )
        inside.add(
            (
                await fd.post_message(
                    secret, dana, "", attachments=[picture("red", "circle", 20 + i)]
                )
            ).id
        )
    await settled(bot, fd)

    reply = await find(fd, guild, general, dana, "a red circle", count=2, public=True)
    seen = result_ids(reply)
    while buttons(reply).get("find:next"):
        reply = await (await fd.click(reply, "find:next", dana)).wait_reply()
        seen += result_ids(reply)
    assert sorted(seen) == sorted(outside)
    everything = await find(fd, guild, general, dana, "a red circle", count=10)
    assert set(result_ids(everything)) == outside | inside


async def test_each_page_turn_asks_again_what_the_member_may_see(world):
    fd, bot = world
    guild, general, secret, erin = moderated(fd, "Changing", "erin")
    await fd.wait_ready()
    thread = guild.add_thread(general, "plans", private=True, members=[erin, guild.bot_member])
    await fd.flush()
    in_secret = await fd.post_message(secret, erin, "", attachments=[picture("red", "star", 30)])
    in_thread = await fd.post_message(thread, erin, "", attachments=[picture("red", "star", 31)])
    in_general = await fd.post_message(general, erin, "", attachments=[picture("red", "star", 32)])
    await settled(bot, fd)
    everything = {in_secret.id, in_thread.id, in_general.id}

    reply = await find(fd, guild, general, erin, "a red star", count=1)
    first = result_ids(reply)
    reply = await (await fd.click(reply, "find:next", erin)).wait_reply()
    assert set(first + result_ids(reply)) < everything  # two of the three so far

    # erin loses the mods role and leaves the private thread while the answer is open.
    await fd.update_member_roles(guild, erin, [])
    await fd.remove_thread_members(thread, [guild.member(erin)])
    shown = []
    reply = await (await fd.click(reply, "find:previous", erin)).wait_reply()
    shown += result_ids(reply)
    while buttons(reply).get("find:next"):
        reply = await (await fd.click(reply, "find:next", erin)).wait_reply()
        shown += result_ids(reply)
    assert set(shown) == {in_general.id}


async def test_a_page_with_nothing_left_says_so(world):
    fd, bot = world
    guild, general, secret, fay = moderated(fd, "Vanishing", "fay")
    await fd.wait_ready()
    for i in range(2):
        await fd.post_message(secret, fay, "", attachments=[picture("blue", "cross", 40 + i)])
    await settled(bot, fd)

    reply = await find(fd, guild, general, fay, "a blue cross", count=1)
    assert len(result_ids(reply)) == 1
    await fd.update_member_roles(guild, fay, [])
    reply = await (await fd.click(reply, "find:next", fay)).wait_reply()
    assert reply["content"] == NOTHING_LEFT and not reply["embeds"]


async def test_two_quick_presses_turn_two_pages_one_after_the_other(world):
    fd, bot = world
    guild = fd.add_guild("Quick")
    general = guild.add_text_channel("general")
    gus = guild.add_member("gus")
    # Posted before the bot came: found by backfill, so confirming each result reads it over
    # REST, and slowly, which leaves a second press time to arrive during the first.
    for i in range(6):
        fd.add_history_message(general, gus, attachments=[picture("yellow", "square", 50 + i)])
    await fd.wait_ready()
    scope = SearchScope(guild_id=guild.id, model_id=bot.encoder.model_id)
    await eventually(lambda: stored(bot, scope, 6))
    fd.slow_down("GET", r"/channels/\d+/messages/\d+", 0.3)

    reply = await find(fd, guild, general, gus, "a yellow square", count=2)
    presses = [await fd.click(reply, "find:next", gus) for _ in range(2)]
    answers = [await p.wait_reply() for p in presses]
    assert ["3–4 of" in answers[0]["content"], "5–6 of" in answers[1]["content"]] == [True, True]
    assert len(set(result_ids(answers[0]) + result_ids(answers[1]))) == 4


async def stored(bot, scope, n: int) -> bool:
    return await bot.store.count(guild_id=scope.guild_id, model_id=scope.model_id) == n
