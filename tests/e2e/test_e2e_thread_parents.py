"""End to end, on SQLite and PostgreSQL: every image in a thread knows the channel it belongs to,
so an exclusion of that channel covers it. A message from a thread the client's cache lacks
resolves its channel before its images are queued; images stored without one (before revision
0003) stay hidden until the bot asks Discord at start, then follow the exclusion."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from retrieval.database.engine import create_engine, downgrade, upgrade
from retrieval.database.tables import IndexedImage
from retrieval.policy.index_policy import IndexPolicy
from tests.fakediscord import FakeDiscord, P
from tests.helpers import (
    backfilled,
    bot_settings,
    eventually,
    find,
    picture,
    result_ids,
    running_bot,
    settled,
)

EXCLUDE = ("clipfind", "channels", "exclude")


async def parents(engine, guild_id: int) -> dict[int, set[int | None]]:
    """Each stored channel's parents, as recorded on its rows."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(IndexedImage.channel_id, IndexedImage.parent_id).where(
                IndexedImage.guild_id == guild_id
            )
        )
    found: dict[int, set[int | None]] = {}
    for channel_id, parent_id in rows:
        found.setdefault(channel_id, set()).add(parent_id)
    return found


@pytest.mark.asyncio(loop_scope="module")
async def test_a_message_from_a_thread_the_cache_lacks_knows_its_channel(world_on):
    fd, bot = world_on
    guild = fd.add_guild("Uncached threads")
    art, secret = guild.add_text_channel("art"), guild.add_text_channel("secret")
    amy = guild.add_member("amy")
    boss = guild.add_member("boss", roles=[guild.add_role("managers", P.MANAGE_GUILD)])
    await fd.wait_ready()
    asked = await fd.invoke_slash(guild, art, boss, EXCLUDE, {"channel": secret})
    assert "is excluded" in (await asked.wait_reply())["content"]
    # Threads the client was never told of: their messages come with a bare channel.
    sketches = guild.add_thread(art, "sketches", dispatch=False)
    hush = guild.add_thread(secret, "hush", dispatch=False)
    shown = await fd.post_message(sketches, amy, "", attachments=[picture("red", "circle", 1)])
    await fd.post_message(hush, amy, "", attachments=[picture("red", "circle", 2)])
    await settled(bot, fd)

    assert await parents(bot.engine, guild.id) == {sketches.id: {art.id}}
    assert result_ids(await find(fd, guild, art, amy, "a red circle", count=2)) == [shown.id]


async def test_thread_images_stored_without_their_channel_follow_its_exclusion(
    tmp_path, database_url
):
    async with FakeDiscord() as fd:
        settings = bot_settings(fd, tmp_path, database_url=database_url)
        guild = fd.add_guild("Old rows")
        art, secret = guild.add_text_channel("art"), guild.add_text_channel("secret")
        amy = guild.add_member("amy")
        sketches = guild.add_thread(art, "sketches")
        hush = guild.add_thread(secret, "hush", archived=True)  # not in the client's cache
        posted = {
            where.id: fd.add_history_message(
                where, amy, "", attachments=[picture("green", "star", seed)]
            )
            for seed, where in enumerate([art, sketches, hush], 1)
        }
        async with running_bot(settings, fd) as bot:
            await backfilled(bot)
            assert await bot.store.count(guild_id=guild.id) == 3

        # The index as an older version left it: no parent on any row (before revision 0003),
        # then #secret excluded by another process, whose survey missed the archived thread.
        engine = create_engine(settings.database_url)
        try:
            await downgrade(engine, "0011")
            async with engine.begin() as conn:
                await conn.execute(update(IndexedImage).values(parent_id=None))
            elsewhere = IndexPolicy(engine)
            await elsewhere.load()
            await elsewhere.exclude_channel(guild_id=guild.id, channel_id=secret.id, by=amy.id)
            await upgrade(engine)  # what the operator runs before starting this version
        finally:
            await engine.dispose()

        async with running_bot(settings, fd) as bot:
            # At start the bot asks Discord what each channel is; the sweep then deletes the
            # excluded channel's thread.
            expected = {art.id: {None}, sketches.id: {art.id}}
            await eventually(lambda: _parents_are(bot, guild.id, expected))
            reply = await find(fd, guild, art, amy, "a green star", count=3)
            assert sorted(result_ids(reply)) == sorted(posted[c].id for c in (art.id, sketches.id))


async def _parents_are(bot, guild_id: int, expected) -> bool:
    return await parents(bot.engine, guild_id) == expected
