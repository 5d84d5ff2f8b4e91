"""End to end: an opt-out holds through images in flight, restarts and other processes, because
the database itself refuses, hides and sweeps what it covers."""

from __future__ import annotations

from sqlalchemy import select

from retrieval.database.engine import create_engine
from retrieval.database.tables import IndexedImage
from retrieval.policy.index_policy import IndexPolicy
from tests.e2e.test_e2e_privacy_commands import opt_out
from tests.fakediscord import FakeDiscord
from tests.helpers import bot_settings, eventually, find, picture, result_ids, running_bot, settled


async def authors_stored(bot) -> list[int]:
    async with bot.engine.connect() as conn:
        return list((await conn.scalars(select(IndexedImage.author_id))).all())


async def test_an_opt_out_while_images_are_in_flight_survives_a_restart(tmp_path):
    async with FakeDiscord() as fd:
        settings = bot_settings(fd, tmp_path)
        guild = fd.add_guild("In flight")
        general = guild.add_text_channel("general")
        alice, bob = guild.add_member("alice"), guild.add_member("bob")
        mine = fd.add_history_message(general, alice, attachments=[picture("green", "cross", 1)])
        theirs = [
            fd.add_history_message(general, bob, attachments=[picture("red", "circle", 10 + i)])
            for i in range(12)
        ]
        for message in theirs:  # slow downloads keep most of bob's images on their way
            fd.set_cdn_fault(message.attachments[0].url, delay=0.4)

        async with running_bot(settings, fd) as bot:
            await eventually(lambda: _has(bot, bob.id))
            assert len(await authors_stored(bot)) < 1 + len(theirs)  # still in flight
            await opt_out(fd, guild, general, bob)
        # Stopped right after the opt-out: downloads cut off, the erasure's second pass never ran.

        async with running_bot(settings, fd) as bot:
            await eventually(lambda: _has(bot, alice.id))
            await settled(bot, fd)
            assert bob.id not in await authors_stored(bot)
            shown = result_ids(await find(fd, guild, general, alice, "a red circle", count=10))
            assert shown == [mine.id]


async def test_an_opt_out_made_by_another_process_is_enforced_at_once(tmp_path, database_url):
    async with FakeDiscord() as fd:
        settings = bot_settings(fd, tmp_path, database_url=database_url)
        guild = fd.add_guild("Elsewhere")
        general = guild.add_text_channel("general")
        alice, bob = guild.add_member("alice"), guild.add_member("bob")
        async with running_bot(settings, fd) as bot:
            blue = picture("blue", "star", 2)
            mine = await fd.post_message(general, alice, "", attachments=[blue])
            for i in range(3):
                red = picture("red", "circle", 20 + i)
                await fd.post_message(general, bob, "", attachments=[red])
            await settled(bot, fd)
            assert (await authors_stored(bot)).count(bob.id) == 3

            # Another process records bob's opt-out and dies before deleting anything.
            other = create_engine(settings.database_url)
            elsewhere = IndexPolicy(other)
            await elsewhere.load()
            await elsewhere.opt_out(bob.id)
            await other.dispose()

            # This process still holds bob's rows, and its memory has not heard yet: the
            # database hides them anyway, from the first search on, and refuses new ones.
            shown = result_ids(await find(fd, guild, general, alice, "a red circle", count=10))
            assert shown == [mine.id]
            await fd.post_message(general, bob, "", attachments=[picture("red", "circle", 30)])
            await settled(bot, fd)
            assert (await authors_stored(bot)).count(bob.id) == 3

        async with running_bot(settings, fd) as bot:  # the sweep at start deletes them
            await eventually(lambda: _none_of(bot, bob.id))


async def _has(bot, author_id: int) -> bool:
    return author_id in await authors_stored(bot)


async def _none_of(bot, author_id: int) -> bool:
    return author_id not in await authors_stored(bot)
