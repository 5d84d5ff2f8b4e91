"""End to end through gateway shards: one process running every shard Discord recommends, and
two processes (shard 0 and shard 1 of 2) sharing one PostgreSQL database and one stand-in."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter

from bot.app import run
from bot.startup import SHARD_REFUSED
from tests.fakediscord import FakeDiscord
from tests.helpers import (
    backfilled,
    bot_settings,
    eventually,
    find,
    picture,
    result_ids,
    running_bot,
    running_bots,
)

CONNECTED = re.compile(r"connected as .*; shards ([\d, ]+) of (\d+); (\d+) guilds")
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange")


def command_syncs(fd: FakeDiscord) -> int:
    return sum(1 for r in fd.requests if r.method == "PUT" and r.path.endswith("/commands"))


def connected_lines(caplog) -> list[tuple[str, int, int]]:
    found = [CONNECTED.search(r.getMessage()) for r in caplog.records]
    return sorted((m[1], int(m[2]), int(m[3])) for m in found if m)


def cluster_settings(fd: FakeDiscord, tmp_path, postgres_engine) -> list:
    url = postgres_engine.url.render_as_string(hide_password=False)
    return [
        bot_settings(fd, tmp_path, database_url=url, shard_count=2, shard_ids=str(shard))
        for shard in (0, 1)
    ]


def spread_servers(fd: FakeDiscord, count: int) -> list:
    """(guild, channel, member), the guilds alternating between shard 0 and shard 1 of 2."""
    servers = []
    for i in range(count):
        guild = fd.add_guild(f"server {i}", shard=(i % 2, 2))
        servers.append((guild, guild.add_text_channel("memes"), guild.add_member("alice")))
    return servers


async def test_one_process_runs_every_recommended_shard(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="bot.client")
    async with FakeDiscord(recommended_shards=2) as fd:
        servers = spread_servers(fd, 4)
        async with running_bot(bot_settings(fd, tmp_path), fd) as bot:
            assert (bot.shard_count, sorted(bot.shards)) == (2, [0, 1])
            assert {g.id for g in bot.guilds} == {g.id for g, _, _ in servers}
            await backfilled(bot)
            guild, memes, alice = servers[1]  # on shard 1
            posted = await fd.post_message(
                memes, alice, "", attachments=[picture("red", "circle", 1)]
            )
            await eventually(lambda: _indexed(bot, [guild]))
            reply = await find(fd, guild, memes, alice, "a red circle")
            assert result_ids(reply) == [posted.id]
    # discord.py's own pacing in one process (SQLite): the second IDENTIFY 5 s after the first.
    assert [i.shard_id for i in fd.identifies] == [0, 1]
    assert fd.identifies[1].at - fd.identifies[0].at >= 5.0
    assert connected_lines(caplog) == [("0, 1", 2, 4)]
    assert command_syncs(fd) == 1


async def _indexed(bot, guilds) -> bool:
    """Whether each guild has exactly one stored image."""
    return [await bot.store.count(guild_id=g.id) for g in guilds] == [1] * len(guilds)


async def test_cluster_start_identifies_one_per_bucket_and_syncs_once(
    tmp_path, postgres_engine, caplog
):
    caplog.set_level(logging.INFO, logger="bot.client")
    async with FakeDiscord(max_concurrency=1) as fd:
        spread_servers(fd, 4)
        async with running_bots(cluster_settings(fd, tmp_path, postgres_engine), fd) as bots:
            assert [sorted(b.shards) for b in bots] == [[0], [1]]
            assert all(b.identify_gate.max_concurrency == 1 for b in bots)
    first, second = sorted(fd.identifies, key=lambda i: i.at)
    assert {first.shard_id, second.shard_id} == {0, 1}
    # One bucket: Discord takes one IDENTIFY per 5 s, so the processes took turns.
    assert second.at - first.at >= 5.0
    assert command_syncs(fd) == 1
    assert connected_lines(caplog) == [("0", 2, 2), ("1", 2, 2)]


async def test_cluster_start_with_two_buckets_identifies_together(tmp_path, postgres_engine):
    async with FakeDiscord(max_concurrency=2) as fd:
        spread_servers(fd, 2)
        async with running_bots(cluster_settings(fd, tmp_path, postgres_engine), fd):
            pass
    first, second = sorted(fd.identifies, key=lambda i: i.at)
    assert second.at - first.at < 2.0, "shards 0 and 1 are in different buckets"
    assert command_syncs(fd) == 1


async def test_each_server_is_served_by_the_process_of_its_shard(tmp_path, postgres_engine):
    async with FakeDiscord(max_concurrency=2) as fd:
        servers = spread_servers(fd, 6)
        async with running_bots(cluster_settings(fd, tmp_path, postgres_engine), fd) as bots:
            heard: list[Counter] = [Counter(), Counter()]
            asked: list[Counter] = [Counter(), Counter()]
            for i, bot in enumerate(bots):

                async def on_message(message, i=i):
                    if not message.author.bot:
                        heard[i][message.guild.id] += 1

                async def on_interaction(interaction, i=i):
                    asked[i][interaction.guild_id] += 1

                bot.add_listener(on_message)
                bot.add_listener(on_interaction)
            await asyncio.gather(*(backfilled(b) for b in bots))
            posted = {}
            for n, (guild, memes, alice) in enumerate(servers):
                message = await fd.post_message(
                    memes, alice, "", attachments=[picture(COLOURS[n], "circle", n)]
                )
                posted[guild.id] = message
            await eventually(lambda: _indexed(bots[0], [g for g, _, _ in servers]))
            for n, (guild, memes, alice) in enumerate(servers):
                reply = await find(fd, guild, memes, alice, f"a {COLOURS[n]} circle", count=1)
                assert result_ids(reply) == [posted[guild.id].id]
    owners = [{g.id for g, _, _ in servers[shard::2]} for shard in (0, 1)]
    # Each post and each /find reached exactly one process: the one running its shard.
    assert [set(h) for h in heard] == owners
    assert all(n == 1 for h in heard for n in h.values())
    assert [dict(a) for a in asked] == [dict.fromkeys(o, 1) for o in owners]
    # Every image was downloaded once, by one process.
    downloads = Counter(path for path, status in fd.cdn.hits if "/attachments/" in path)
    assert len(downloads) == len(servers) and set(downloads.values()) == {1}


async def test_too_few_shards_stop_with_a_clear_sentence(tmp_path, caplog):
    caplog.set_level(logging.CRITICAL)
    async with FakeDiscord(max_guilds_per_shard=2) as fd:
        spread_servers(fd, 3)
        status = await asyncio.wait_for(run(bot_settings(fd, tmp_path, shard_count=1)), 60)
    assert status == 2
    assert SHARD_REFUSED[4011] in caplog.text
    assert "Traceback" not in caplog.text
