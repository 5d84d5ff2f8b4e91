"""End to end: `/privacy` (opt out with erasure, opt in, status) and `/clipfind channels`
(exclude, include, list) as members and managers use them."""

from __future__ import annotations

import pytest

from bot.cogs import admin, privacy
from retrieval.errors import StoreUnavailable
from tests.fakediscord import P
from tests.helpers import eventually, picture, settled

pytestmark = pytest.mark.asyncio(loop_scope="module")

MANAGE_SERVER = int(P.MANAGE_GUILD)


async def run(fd, guild, channel, member, path: str, options: dict | None = None) -> dict:
    interaction = await fd.invoke_slash(guild, channel, member, path, options)
    return await interaction.wait_reply(timeout=30)


def buttons(reply: dict) -> dict[str, str]:
    """Label → custom id of every button the member sees."""
    return {
        item["label"]: item["custom_id"]
        for row in reply.get("components", [])
        for item in row.get("components", [])
        if item.get("type") == 2
    }


async def server(fd, name: str):
    guild = fd.add_guild(name)
    general = guild.add_text_channel("general")
    alice, bob = guild.add_member("alice"), guild.add_member("bob")
    await fd.wait_ready()
    return guild, general, alice, bob


async def opt_out(fd, guild, channel, member) -> dict:
    asked = await run(fd, guild, channel, member, "privacy opt-out")
    done = await fd.click(asked, buttons(asked)["Opt out and delete my images"], member)
    return await done.wait_reply(timeout=30, predicate=lambda m: not m["components"])


async def test_commands_are_synced_with_descriptions_and_open_help(world):
    fd, _ = world
    synced = {c["name"]: c for c in fd.synced_commands[None]}
    subcommands = {o["name"]: o for o in synced["privacy"]["options"]}
    assert set(subcommands) == {"opt-out", "opt-in", "status"}
    assert "every server" in subcommands["opt-out"]["description"]
    assert all(o["description"] for o in subcommands.values())

    clipfind = synced["clipfind"]
    # Help and status are for everyone; the settings commands check Manage Server themselves.
    assert clipfind["default_member_permissions"] is None
    assert clipfind["dm_permission"] is False  # servers only
    groups = {o["name"]: o for o in clipfind["options"]}
    assert set(groups) == {"channels", "help", "status"}
    channels = groups["channels"]
    actions = {o["name"]: o for o in channels["options"]}
    assert set(actions) == {"exclude", "include", "list"}
    for name in ("exclude", "include"):
        (option,) = actions[name]["options"]
        assert option["description"].startswith("The ")
        assert 4 not in option["channel_types"]  # no categories


async def test_opt_out_asks_first_then_deletes_everywhere_and_stops_indexing(world):
    fd, bot = world
    guild, general, alice, bob = await server(fd, "Opt-out A")
    other = fd.add_guild("Opt-out B")
    elsewhere = other.add_text_channel("general")
    other.add_existing_user(bob.user)
    await fd.wait_ready()
    await fd.post_message(general, bob, "", attachments=[picture("red", "circle", 1)])
    await fd.post_message(elsewhere, bob, "", attachments=[picture("blue", "star", 2)])
    await fd.post_message(general, alice, "", attachments=[picture("green", "cross", 3)])
    await settled(bot, fd)

    asked = await run(fd, guild, general, bob, "privacy opt-out")
    assert asked["flags"] & 64, "only the member sees the question"
    assert "every server" in asked["content"] and "(2 images)" in asked["content"]
    assert set(buttons(asked)) == {"Opt out and delete my images", "Cancel"}
    assert await bot.store.count_author(author_id=bob.id) == 2, "nothing happens before yes"
    # Nobody else can press it: Discord shows the question to bob alone.
    with pytest.raises(PermissionError):
        await fd.click(asked, buttons(asked)["Opt out and delete my images"], alice)

    done = await fd.click(asked, buttons(asked)["Opt out and delete my images"], bob)
    answer = await done.wait_reply(timeout=30, predicate=lambda m: not m["components"])
    assert "opted out in every server" in answer["content"] and "2 images" in answer["content"]
    assert await bot.store.count_author(author_id=bob.id) == 0
    assert await bot.store.count_author(author_id=alice.id) == 1

    await fd.post_message(general, bob, "", attachments=[picture("yellow", "square", 4)])
    await settled(bot, fd)
    assert await bot.store.count_author(author_id=bob.id) == 0
    again = await run(fd, guild, general, bob, "privacy opt-out")
    assert again["content"] == privacy.ALREADY_OUT and not buttons(again)


async def test_an_opt_out_whose_deletion_meets_an_outage_deletes_once_the_database_is_back(
    world, monkeypatch
):
    """The opt-out is recorded, then the database goes away before the images are deleted: the
    member is told so, and the deletion does not wait for them to ask again (a retry would only
    find them opted out already)."""
    fd, bot = world
    guild, general, _, bob = await server(fd, "Outage between")
    await fd.post_message(general, bob, "", attachments=[picture("purple", "circle", 6)])
    await settled(bot, fd)
    store = bot.store
    delete_author, failures = store.delete_author, []

    async def away_at_first(**kwargs):
        if len(failures) < 2:
            failures.append(kwargs)
            raise StoreUnavailable("connection refused")
        return await delete_author(**kwargs)

    monkeypatch.setattr(store, "delete_author", away_at_first)
    answer = await opt_out(fd, guild, general, bob)
    assert answer["content"] == privacy.OPTED_OUT_DELETING
    assert bot.policy.is_opted_out(bob.id)

    async def deleted() -> bool:
        return await store.count_author(author_id=bob.id) == 0

    await eventually(deleted, within=30)
    assert len(failures) == 2  # retried after each failure, by the bot alone
    again = await run(fd, guild, general, bob, "privacy opt-out")
    assert again["content"] == privacy.ALREADY_OUT


async def test_opt_out_can_be_cancelled_and_the_question_expires(world, monkeypatch):
    fd, bot = world
    guild, general, _, bob = await server(fd, "Second thoughts")
    await fd.post_message(general, bob, "", attachments=[picture("orange", "triangle", 5)])
    await settled(bot, fd)

    asked = await run(fd, guild, general, bob, "privacy opt-out")
    cancelled = await fd.click(asked, buttons(asked)["Cancel"], bob)
    answer = await cancelled.wait_reply(timeout=30)
    assert answer["content"] == privacy.CANCELLED and not answer["components"]

    monkeypatch.setattr(bot.get_cog("Privacy"), "confirm_timeout_s", 0.3)
    interaction = await fd.invoke_slash(guild, general, bob, "privacy opt-out")
    expired = await interaction.wait_reply(
        timeout=10, predicate=lambda m: m["content"] == privacy.EXPIRED
    )
    assert not expired["components"]
    assert not bot.policy.is_opted_out(bob.id)
    assert await bot.store.count_author(author_id=bob.id) == 1


async def test_opt_in_indexes_new_images_again(world):
    fd, bot = world
    guild, general, alice, bob = await server(fd, "Opt-in")
    assert (await run(fd, guild, general, alice, "privacy opt-in"))["content"] == privacy.NOT_OUT
    await opt_out(fd, guild, general, bob)

    answer = await run(fd, guild, general, bob, "privacy opt-in")
    assert answer["content"] == privacy.OPTED_IN and answer["flags"] & 64
    await fd.post_message(general, bob, "", attachments=[picture("purple", "circle", 6)])
    await settled(bot, fd)
    assert await bot.store.count_author(author_id=bob.id) == 1


async def test_status_says_what_is_stored_and_whether_opted_out(world):
    fd, bot = world
    guild, general, _, bob = await server(fd, "Status A")
    other = fd.add_guild("Status B")
    elsewhere = other.add_text_channel("general")
    other.add_existing_user(bob.user)
    await fd.wait_ready()
    await fd.post_message(
        general, bob, "", attachments=[picture("red", "star", 7), picture("blue", "cross", 8)]
    )
    await fd.post_message(elsewhere, bob, "", attachments=[picture("green", "circle", 9)])
    await settled(bot, fd)

    status = (await run(fd, guild, general, bob, "privacy status"))["content"]
    assert "not opted out" in status
    assert "3 images of yours across all servers, 2 of them in this one" in status
    assert "Never the image itself" in status

    await opt_out(fd, guild, general, bob)
    status = (await run(fd, guild, general, bob, "privacy status"))["content"]
    assert "You're opted out" in status and "no images of yours" in status


async def test_leaving_keeps_a_members_images_but_an_opted_out_member_has_none(world):
    fd, bot = world
    guild, general, alice, bob = await server(fd, "Leavers")
    await fd.post_message(general, alice, "", attachments=[picture("red", "cross", 10)])
    await fd.post_message(general, bob, "", attachments=[picture("blue", "square", 11)])
    await settled(bot, fd)
    await opt_out(fd, guild, general, bob)

    await fd.remove_member(guild, alice)
    await fd.remove_member(guild, bob)
    await settled(bot, fd)
    assert await bot.store.count_author(author_id=alice.id, guild_id=guild.id) == 1
    assert await bot.store.count_author(author_id=bob.id) == 0


async def test_managers_exclude_list_and_include_channels(world):
    fd, bot = world
    guild, general, alice, _ = await server(fd, "Managed")
    mods = guild.add_role("mods", permissions=MANAGE_SERVER)
    mod = guild.add_member("mod", roles=[mods])
    memes = guild.add_text_channel("memes")
    thread = guild.add_thread(memes, "cats", members=[alice])
    archived = guild.add_thread(memes, "old cats", members=[alice])
    await fd.flush()
    for seed, channel in enumerate((memes, thread, archived, general), start=12):
        await fd.post_message(channel, alice, "", attachments=[picture("red", "circle", seed)])
    await settled(bot, fd)
    await fd.archive_thread(archived)
    await settled(bot, fd)

    answer = await run(fd, guild, general, mod, "clipfind channels exclude", {"channel": memes})
    assert answer["flags"] & 64
    assert memes.mention in answer["content"] and "deleted 3 indexed images" in answer["content"]
    assert await bot.store.channel_ids(guild_id=guild.id) == {general.id}
    listed = await run(fd, guild, general, mod, "clipfind channels list")
    assert memes.mention in listed["content"]
    again = await run(fd, guild, general, mod, "clipfind channels exclude", {"channel": memes})
    assert "already excluded" in again["content"]

    await fd.post_message(memes, alice, "", attachments=[picture("blue", "star", 16)])
    await fd.post_message(thread, alice, "", attachments=[picture("green", "star", 17)])
    await settled(bot, fd)
    assert await bot.store.count(guild_id=guild.id) == 1, "nothing new from #memes or its threads"

    answer = await run(fd, guild, general, mod, "clipfind channels include", {"channel": memes})
    assert "indexed again" in answer["content"]
    listed = await run(fd, guild, general, mod, "clipfind channels list")
    assert listed["content"] == admin.NONE_EXCLUDED
    new = await fd.post_message(memes, alice, "", attachments=[picture("yellow", "cross", 18)])
    await settled(bot, fd)
    assert await bot.store.known_keys(new.id) == {new.attachments[0].id}

    # Its history is read again too, threads (archived ones as well) included: #memes 3,
    # the threads 2 + 1, and #general's 1.
    async def history_back() -> bool:
        return await bot.store.count(guild_id=guild.id) == 7

    await eventually(history_back)


async def test_members_without_manage_server_cannot_change_channels(world):
    fd, bot = world
    guild, general, alice, _ = await server(fd, "Unmanaged")
    mods = guild.add_role("mods", permissions=MANAGE_SERVER)
    mod = guild.add_member("mod", roles=[mods])
    hidden = guild.add_text_channel("hidden")
    await fd.flush()
    await run(fd, guild, general, mod, "clipfind channels exclude", {"channel": hidden})
    await fd.post_message(general, alice, "", attachments=[picture("red", "square", 19)])
    await settled(bot, fd)

    def refused(answer: dict) -> None:
        assert answer["content"] == "This needs the Manage Server permission."
        assert answer["flags"] & 64

    refused(await run(fd, guild, general, alice, "clipfind channels exclude", {"channel": general}))
    refused(await run(fd, guild, general, alice, "clipfind channels include", {"channel": hidden}))
    refused(await run(fd, guild, general, alice, "clipfind channels list"))
    # Each command acts before it answers: by now an exclusion would have erased #general's
    # image, and an include would have let #hidden's new one in.
    assert not bot.policy.is_excluded(general.id) and bot.policy.is_excluded(hidden.id)
    assert await bot.store.count(guild_id=guild.id) == 1
    await fd.post_message(general, alice, "", attachments=[picture("blue", "star", 20)])
    await fd.post_message(hidden, alice, "", attachments=[picture("green", "cross", 21)])
    await settled(bot, fd)
    assert await bot.store.channel_ids(guild_id=guild.id) == {general.id}
    assert await bot.store.count(guild_id=guild.id) == 2


async def test_any_member_sees_help_and_status(world):
    fd, bot = world
    guild, general, alice, _ = await server(fd, "Open help")
    await fd.post_message(general, alice, "", attachments=[picture("green", "cross", 23)])
    await fd.post_message(general, alice, "", attachments=[picture("red", "star", 24)])
    await settled(bot, fd)
    status = await run(fd, guild, general, alice, "clipfind status")
    assert status["flags"] & 64
    assert "**Images indexed in this server:** 2" in status["content"]
    model = bot.encoder.encoder
    assert f"`{model.model_id}` ({model.precision} on cpu)" in status["content"]
    assert "History backfill" in status["content"]
    help_text = await run(fd, guild, general, alice, "clipfind help")
    assert "/find" in help_text["content"]
