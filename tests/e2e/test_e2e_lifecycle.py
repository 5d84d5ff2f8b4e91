"""End to end: what is deleted on Discord leaves the index, and the bot's removal purges a server
(at once, or after the grace period unless it comes back)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from retrieval.database.clock import database_now
from retrieval.database.engine import create_engine
from retrieval.database.tables import GuildDeparture
from tests.fakediscord import FakeDiscord
from tests.helpers import (
    bot_settings,
    count_is,
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


def linked(fd: FakeDiscord, colour: str, shape: str, seed: int) -> str:
    data = png_bytes(draw(colour, shape, size=160, rng=seed))
    return fd.host_external_image(f"{colour}-{shape}.png", data, "image/png")


async def server(fd, name: str):
    guild = fd.add_guild(name)
    channel = guild.add_text_channel("general")
    member = guild.add_member("alice")
    await fd.wait_ready()
    return guild, channel, member


async def test_deleted_message_leaves_the_index(world):
    fd, bot = world
    guild, general, alice = await server(fd, "Deletes")
    gone = await fd.post_message(general, alice, "", attachments=[picture("red", "circle", 1)])
    kept = await fd.post_message(general, alice, "", attachments=[picture("blue", "square", 2)])
    await settled(bot, fd)
    assert await bot.store.count(guild_id=guild.id) == 2

    await fd.delete_message(gone)
    await count_is(bot, guild.id, 1)
    assert await bot.store.known_keys(gone.id) == set()
    seen = json.dumps(await find(fd, guild, general, alice, "a red circle"))
    assert str(gone.id) not in seen and str(kept.id) in seen


async def test_bulk_delete_leaves_the_index(world):
    fd, bot = world
    guild, general, alice = await server(fd, "Bulk")
    posts = [
        await fd.post_message(general, alice, "", attachments=[picture(colour, "cross", seed)])
        for seed, colour in enumerate(("red", "blue", "green"), start=4)
    ]
    await settled(bot, fd)
    await fd.bulk_delete(general, posts[:2])
    await count_is(bot, guild.id, 1)
    assert await bot.store.known_keys(posts[2].id) == {posts[2].attachments[0].id}


async def test_edit_removing_one_of_two_attachments_removes_only_that_image(world):
    fd, bot = world
    guild, general, alice = await server(fd, "Edits")
    message = await fd.post_message(
        general, alice, "", attachments=[picture("red", "square", 7), picture("blue", "circle", 8)]
    )
    await settled(bot, fd)
    removed, kept = message.attachments
    await fd.edit_message(message, attachments=[kept])

    async def only_kept() -> bool:
        return await bot.store.known_keys(message.id) == {kept.id}

    await eventually(only_kept)
    seen = json.dumps(await find(fd, guild, general, alice, "a red square"))
    assert removed.url.split("?")[0] not in seen


async def test_edit_removing_an_image_embed_removes_its_image(world):
    fd, bot = world
    guild, general, alice = await server(fd, "Embeds")
    url = linked(fd, "purple", "triangle", 9)
    message = await fd.post_message(general, alice, url, embeds=[fd.image_embed(url)])
    await settled(bot, fd)
    assert await bot.store.count(guild_id=guild.id) == 1
    await fd.edit_message(message, embeds=[])  # the author suppressed the preview
    await count_is(bot, guild.id, 0)


async def test_deleted_channel_takes_its_threads_with_it(world):
    fd, bot = world
    guild, general, alice = await server(fd, "Channels")
    doomed = guild.add_text_channel("doomed")
    active = guild.add_thread(doomed, "active", members=[alice])
    archived = guild.add_thread(doomed, "archived", members=[alice])
    await fd.flush()
    await fd.post_message(doomed, alice, "", attachments=[picture("red", "circle", 10)])
    await fd.post_message(active, alice, "", attachments=[picture("blue", "cross", 11)])
    await fd.post_message(archived, alice, "", attachments=[picture("green", "square", 12)])
    star = await fd.post_message(general, alice, "", attachments=[picture("yellow", "star", 13)])
    await settled(bot, fd)
    assert await bot.store.count(guild_id=guild.id) == 4
    await fd.archive_thread(archived)  # leaves the client's cache: only Discord knows it now
    await settled(bot, fd)
    assert bot.get_guild(guild.id).get_thread(archived.id) is None

    await fd.delete_channel(doomed)
    await count_is(bot, guild.id, 1)
    assert await bot.store.channel_ids(guild_id=guild.id) == {general.id}
    # Everything left is shown: #general's star, however poorly it matches.
    seen = await find(fd, guild, general, alice, "a green square", count=4)
    assert result_ids(seen) == [star.id]


async def test_deleted_thread_leaves_the_index(world):
    fd, bot = world
    guild, general, alice = await server(fd, "Threads")
    thread = guild.add_thread(general, "pics", members=[alice])
    await fd.flush()
    await fd.post_message(thread, alice, "", attachments=[picture("orange", "circle", 14)])
    await fd.post_message(general, alice, "", attachments=[picture("blue", "star", 15)])
    await settled(bot, fd)
    await fd.delete_thread(thread)
    await count_is(bot, guild.id, 1)
    assert await bot.store.channel_ids(guild_id=guild.id) == {general.id}


async def test_removed_bot_purges_the_server_at_once_by_default(world):
    fd, bot = world
    guild, general, alice = await server(fd, "Kicked")
    other, elsewhere, carol = await server(fd, "Still here")
    await fd.post_message(general, alice, "", attachments=[picture("green", "circle", 18)])
    await fd.post_message(elsewhere, carol, "", attachments=[picture("red", "star", 19)])
    await settled(bot, fd)
    await fd.remove_bot_from_guild(guild)
    await count_is(bot, guild.id, 0)
    assert await bot.store.count(guild_id=other.id) == 1
    assert await bot.get_cog("Lifecycle").departures.pending() == {}


@pytest.fixture
def grace_hour(world, monkeypatch):
    _, bot = world
    monkeypatch.setattr(bot.settings, "guild_purge_grace_hours", 1.0)
    return bot.get_cog("Lifecycle")


async def test_removed_bot_keeps_the_index_for_the_grace_period(world, grace_hour):
    fd, bot = world
    guild, general, alice = await server(fd, "Grace")
    await fd.post_message(general, alice, "", attachments=[picture("blue", "triangle", 20)])
    await settled(bot, fd)
    await fd.remove_bot_from_guild(guild)
    await settled(bot, fd)
    assert await bot.store.count(guild_id=guild.id) == 1
    assert guild.id in await grace_hour.departures.pending()

    now = datetime.now(UTC)
    assert await grace_hour.purge_due(now=now + timedelta(minutes=50)) == []
    assert await bot.store.count(guild_id=guild.id) == 1
    assert await grace_hour.purge_due(now=now + timedelta(minutes=70)) == [guild.id]
    assert await bot.store.count(guild_id=guild.id) == 0
    assert guild.id not in await grace_hour.departures.pending()


async def test_readding_the_bot_in_time_cancels_the_purge(world, grace_hour):
    fd, bot = world
    guild, general, alice = await server(fd, "Back again")
    message = await fd.post_message(
        general, alice, "", attachments=[picture("yellow", "circle", 21)]
    )
    await settled(bot, fd)
    await fd.remove_bot_from_guild(guild)
    await settled(bot, fd)
    await fd.add_bot_to_guild(guild)
    await settled(bot, fd)
    assert guild.id not in await grace_hour.departures.pending()
    assert await grace_hour.purge_due(now=datetime.now(UTC) + timedelta(hours=2)) == []
    assert await bot.store.count(guild_id=guild.id) == 1
    assert str(message.id) in json.dumps(await find(fd, guild, general, alice, "a yellow circle"))


async def test_purges_due_while_the_bot_was_down_happen_at_the_next_start(tmp_path):
    async with FakeDiscord() as fd:
        settings = bot_settings(fd, tmp_path, guild_purge_grace_hours=1.0)
        guilds = {}
        async with running_bot(settings, fd) as bot:
            for name in ("left", "kicked offline", "kept"):
                guild, general, alice = await server(fd, name)
                await fd.post_message(general, alice, "", attachments=[picture("red", "cross", 22)])
                guilds[name] = guild
            await settled(bot, fd)
            await fd.remove_bot_from_guild(guilds["left"])
            await settled(bot, fd)
            assert await bot.store.count(guild_id=guilds["left"].id) == 1  # not yet due
            assert guilds["left"].id in await bot.get_cog("Lifecycle").departures.pending()
        await fd.remove_bot_from_guild(guilds["kicked offline"], dispatch=False)
        await grace_passes(settings, hours=2)  # while the bot is down

        async with running_bot(settings, fd) as bot:
            await count_is(bot, guilds["left"].id, 0)
            # No event ever said so; missing from READY starts its grace period now (the purge
            # above may come first: the purge loop runs from the start, READY's look after it).
            lifecycle = bot.get_cog("Lifecycle")

            async def kicked_is_pending() -> bool:
                return guilds["kicked offline"].id in await lifecycle.departures.pending()

            await eventually(kicked_is_pending)
            assert await bot.store.count(guild_id=guilds["kicked offline"].id) == 1
            later = await database_now(bot.engine) + timedelta(hours=1, seconds=5)
            assert await lifecycle.purge_due(now=later) == [guilds["kicked offline"].id]
            assert await bot.store.count(guild_id=guilds["kept"].id) == 1
            assert await bot.store.guild_ids() == {guilds["kept"].id}


async def grace_passes(settings, *, hours: float) -> None:
    """Time passes for the stopped bot's departures: each is moved that much into the past (by
    the database's clock, which they are written and compared with)."""
    engine = create_engine(settings.database_url)
    try:
        async with engine.begin() as conn:
            earlier = await database_now(conn) - timedelta(hours=hours)
            await conn.execute(update(GuildDeparture).values(left_at=earlier))
    finally:
        await engine.dispose()


# Last with the other test that runs its own stand-in: starting a bot points discord.py's
# process-wide API base at that stand-in, away from the module's shared world.
async def test_message_deleted_while_offline_is_dropped_from_find_and_the_index(tmp_path):
    async with FakeDiscord() as fd:
        settings = bot_settings(fd, tmp_path)
        async with running_bot(settings, fd) as bot:
            guild, general, alice = await server(fd, "Offline deletes")
            gone = await fd.post_message(
                general, alice, "", attachments=[picture("green", "star", 3)]
            )
            kept = await fd.post_message(
                general, alice, "", attachments=[picture("blue", "square", 5)]
            )
            await settled(bot, fd)
        await fd.delete_message(gone, dispatch=False)  # no event: the bot is down

        async with running_bot(settings, fd) as bot:
            # No event ever came, so the index still has it...
            assert await bot.store.known_keys(gone.id) == {gone.attachments[0].id}
            seen = await find(fd, guild, general, alice, "a green star", count=4)
            # ...until /find asks Discord about it: the best match is gone, so it is not shown,
            # the picture still there is, and the gone one leaves the index as it answers.
            assert result_ids(seen) == [kept.id]
            assert await bot.store.known_keys(gone.id) == set()
            assert await bot.store.known_keys(kept.id) == {kept.attachments[0].id}
            fetches = message_fetches(fd)
            again = await find(fd, guild, general, alice, "a green star", count=4)
            assert result_ids(again) == [kept.id]
            assert message_fetches(fd) == fetches  # not asked about twice


async def test_a_bot_stopped_right_after_ready_leaves_no_startup_work_running(tmp_path):
    """Stopped as soon as it is ready, the bot's start-up work (servers gone while offline, due
    purges) is cancelled and awaited before the database closes: none of it is left pending
    with a connection of a disposed engine."""
    async with FakeDiscord() as fd:
        fd.add_guild("Shapes club")
        async with running_bot(bot_settings(fd, tmp_path), fd):
            pass
    for _ in range(3):
        await asyncio.sleep(0)  # let discord.py's dispatch tasks see their handlers end
    startup = {"discord.py: on_ready", "lifecycle-ready", "lifecycle-sweep"}
    left = [t.get_name() for t in asyncio.all_tasks() if t.get_name() in startup and not t.done()]
    assert left == []
