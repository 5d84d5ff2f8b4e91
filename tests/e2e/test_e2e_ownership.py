"""End to end: processes sharing one PostgreSQL, each running one of two shards, act unasked only
on the servers of their own shard. A server missing from one process's READY is another's, not
one that removed the bot; restarting either process deletes nothing.

The stand-in lists every server it has to every connection, so each start is shown only the
servers of the shard it runs, as Discord would.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from bot.client import ClipfindBot
from bot.ownership import shard_of
from retrieval.config import Settings
from retrieval.database.engine import create_engine
from retrieval.policy.index_policy import IndexPolicy
from tests.fakediscord import FakeDiscord
from tests.fakediscord.models import Guild, Member, User
from tests.helpers import backfilled, bot_settings, count_is, eventually, picture, running_bot

pytestmark = pytest.mark.asyncio(loop_scope="module")

SHARDS = 2


def running_shard(settings: Settings, fd: FakeDiscord, *, shard: int):
    """The bot started as shard ``shard`` of SHARDS, through its settings."""
    return running_bot(
        settings.model_copy(update={"shard_count": SHARDS, "shard_ids": str(shard)}), fd
    )


async def server_on(
    fd: FakeDiscord, name: str, *, shard: int, author: User | None = None
) -> tuple[Guild, Member]:
    """A server of ``shard`` (its id's millisecond decides) whose history holds one image by
    ``author`` (a new member when None)."""
    while True:
        guild = fd.add_guild(name, dispatch=False)
        if shard_of(guild.id, SHARDS) == shard:
            break
        del fd.guilds[guild.id]
        await asyncio.sleep(0.002)  # servers made in the same millisecond share a shard
    general = guild.add_text_channel("general", dispatch=False)
    if author is None:
        member = guild.add_member("alice", dispatch=False)
    else:
        member = guild.add_existing_user(author, dispatch=False)
    fd.add_history_message(general, member, attachments=[picture("red", "circle", guild.id % 97)])
    return guild, member


async def show_only(fd: FakeDiscord, *, shard: int, guilds: list[Guild]) -> None:
    """The bot is in every one of ``guilds``; a connection for ``shard`` sees only its own."""
    for guild in guilds:
        if shard_of(guild.id, SHARDS) == shard:
            await fd.add_bot_to_guild(guild, dispatch=False)
        else:
            await fd.remove_bot_from_guild(guild, dispatch=False)


async def judged(bot: ClipfindBot) -> None:
    """The start's look at the servers is over: departures noticed, those due purged, channels
    deleted while offline swept (the sweep comes last)."""
    lifecycle = bot.get_cog("Lifecycle")

    async def swept() -> bool:
        return lifecycle._sweeper is not None and lifecycle._sweeper.done()

    await backfilled(bot)
    await eventually(swept, within=30)


async def counts(bot: ClipfindBot, *guilds: Guild) -> list[int]:
    return [await bot.store.count(guild_id=guild.id) for guild in guilds]


async def test_each_process_judges_and_purges_only_the_servers_of_its_shard(
    tmp_path, postgres_engine
):
    url = postgres_engine.url.render_as_string(hide_password=False)
    async with FakeDiscord() as fd:
        settings = bot_settings(fd, tmp_path, database_url=url)
        graceful = bot_settings(fd, tmp_path, database_url=url, guild_purge_grace_hours=1.0)
        (ours, _), (gone, _) = (
            await server_on(fd, "ours", shard=0),
            await server_on(fd, "gone", shard=0),
        )
        theirs, _ = await server_on(fd, "theirs", shard=1)
        async with running_bot(settings, fd) as bot:  # one process for both shards
            await judged(bot)
            assert await counts(bot, ours, gone, theirs) == [1, 1, 1]

        # Removed from `gone` while no process ran. Shard 0's process does not hear of
        # `theirs`: that is no reason to purge it.
        await fd.remove_bot_from_guild(gone, dispatch=False)
        await show_only(fd, shard=0, guilds=[ours, theirs])
        async with running_shard(settings, fd, shard=0) as bot:
            await judged(bot)
            departures = bot.get_cog("Lifecycle").departures
            await eventually(lambda: _empty(departures))
            assert await counts(bot, ours, gone, theirs) == [1, 0, 1]

        for shard in (0, 1, 0):  # restart either process: nothing deleted
            await show_only(fd, shard=shard, guilds=[ours, theirs])
            async with running_shard(settings, fd, shard=shard) as bot:
                await judged(bot)
                assert await counts(bot, ours, theirs) == [1, 1]
                assert await bot.get_cog("Lifecycle").departures.pending() == {}

        # Shard 1's server removes the bot: its process records it; shard 0's never purges it.
        await show_only(fd, shard=1, guilds=[ours, theirs])
        async with running_shard(graceful, fd, shard=1) as bot:
            await judged(bot)
            await fd.remove_bot_from_guild(theirs)
            departures = bot.get_cog("Lifecycle").departures
            await eventually(lambda: _pending(departures, theirs.id))
        later = datetime.now(UTC) + timedelta(hours=2)
        await show_only(fd, shard=0, guilds=[ours])
        async with running_shard(graceful, fd, shard=0) as bot:
            await judged(bot)
            assert await bot.get_cog("Lifecycle").purge_due(now=later) == []
            assert await counts(bot, ours, theirs) == [1, 1]
            assert theirs.id in await bot.get_cog("Lifecycle").departures.pending()
        async with running_shard(graceful, fd, shard=1) as bot:
            await judged(bot)
            assert await bot.get_cog("Lifecycle").purge_due(now=later) == [theirs.id]
            assert await counts(bot, ours, theirs) == [1, 0]


async def test_each_process_sweeps_what_the_policy_forbids_in_the_servers_of_its_shard(
    tmp_path, postgres_engine
):
    """An opt-out was recorded by a process that stopped before deleting anything: the sweep at
    each start deletes the member's images in that process's servers only."""
    url = postgres_engine.url.render_as_string(hide_password=False)
    async with FakeDiscord() as fd:
        settings = bot_settings(fd, tmp_path, database_url=url)
        ours, alice = await server_on(fd, "ours", shard=0)
        theirs, _ = await server_on(fd, "theirs", shard=1, author=alice.user)
        async with running_bot(settings, fd) as bot:
            await judged(bot)
            assert await counts(bot, ours, theirs) == [1, 1]
        elsewhere = create_engine(url)
        try:
            await IndexPolicy(elsewhere).opt_out(alice.user.id)
        finally:
            await elsewhere.dispose()

        await show_only(fd, shard=0, guilds=[ours, theirs])
        async with running_shard(settings, fd, shard=0) as bot:
            await count_is(bot, ours.id, 0)
            await judged(bot)
            assert await counts(bot, theirs) == [1]  # shard 1's process sweeps it
        await show_only(fd, shard=1, guilds=[ours, theirs])
        async with running_shard(settings, fd, shard=1) as bot:
            await count_is(bot, theirs.id, 0)


async def _empty(departures) -> bool:
    return await departures.pending() == {}


async def _pending(departures, guild_id: int) -> bool:
    return guild_id in await departures.pending()
