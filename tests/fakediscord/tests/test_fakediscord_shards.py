"""The stand-in's sharding, driven by plain discord.py clients (not the project's bot)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import discord
import pytest
import yarl
from discord import app_commands

from tests.fakediscord import FakeDiscord
from tests.fakediscord.payloads import me


@pytest.fixture
async def fd(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(recommended_shards=2, max_concurrency=2) as fake:
        monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
        monkeypatch.setattr(
            discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url)
        )
        yield fake


async def no_identify_pause(shard_id: int | None, *, initial: bool = False) -> None:
    pass  # discord.py sleeps 5 s before each IDENTIFY after the first; not measured here


def shard_client(
    shard_id: int | None = None,
    shard_count: int | None = None,
    cls: type[discord.Client] = discord.Client,
    **options: Any,
) -> discord.Client:
    intents = discord.Intents.default()
    intents.message_content = True
    if shard_id is not None:
        options["shard_id"] = shard_id
    client = cls(intents=intents, guild_ready_timeout=0.05, shard_count=shard_count, **options)
    client.before_identify_hook = no_identify_pause
    return client


@contextlib.asynccontextmanager
async def running(*clients: discord.Client, fd: FakeDiscord) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(c.start(fd.token)) for c in clients]
    try:
        await asyncio.wait_for(asyncio.gather(*(c.wait_until_ready() for c in clients)), 10)
        yield
    finally:
        for client in clients:
            await client.close()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def test_guild_ids_spread_over_shards(fd: FakeDiscord) -> None:
    guilds = [fd.add_guild(f"g{i}") for i in range(8)]
    # Each guild in a millisecond of its own: consecutive guilds fall on both of two shards.
    assert len({g.id >> 22 for g in guilds}) == 8
    assert {fd.shard_of(g, 2) for g in guilds} == {0, 1}
    assert len({fd.shard_of(g, 3) for g in guilds}) == 3
    placed = [fd.add_guild(f"on {i % 4}", shard=(i % 4, 4)) for i in range(8)]
    assert [fd.shard_of(g, 4) for g in placed] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert placed == sorted(placed, key=lambda g: g.id), "ids still grow with time"


async def test_each_shard_hears_only_its_guilds(fd: FakeDiscord) -> None:
    guilds = [fd.add_guild(f"g{i}", shard=(i % 2, 2)) for i in range(4)]
    channels = [g.add_text_channel("memes") for g in guilds]
    members = [g.add_member("alice") for g in guilds]
    clients = [shard_client(0, 2), shard_client(1, 2)]
    heard: list[list[tuple[str, int]]] = [[], []]
    types: list[list[str]] = [[], []]
    trees = [app_commands.CommandTree(c) for c in clients]
    for i, (client, tree) in enumerate(zip(clients, trees, strict=True)):

        @client.event
        async def on_message(message: discord.Message, i: int = i) -> None:
            heard[i].append((message.content, message.guild.id))

        @client.event
        async def on_socket_event_type(event: str, i: int = i) -> None:
            types[i].append(event)

        @tree.command(name="which", description="Which shard answers")
        async def which(interaction: discord.Interaction, i: int = i) -> None:
            await interaction.response.send_message(f"shard {i}")

    async with running(*clients, fd=fd):
        assert [sorted(g.id for g in c.guilds) for c in clients] == [
            sorted(g.id for g in guilds[0::2]),
            sorted(g.id for g in guilds[1::2]),
        ]
        await trees[0].sync()
        for guild, channel, member in zip(guilds, channels, members, strict=True):
            await fd.post_message(channel, member, f"hello {guild.name}")
        added = fd.add_guild("late", shard=(1, 2))  # GUILD_CREATE only to shard 1
        fd.gateway.dispatch("USER_UPDATE", me(fd))  # no guild: shard 0, as DMs
        await fd.flush()
        await asyncio.sleep(0.2)
        answers = []
        for guild, channel, member in zip(guilds, channels, members, strict=True):
            inter = await fd.invoke_slash(guild, channel, member, "which", {})
            answers.append((await inter.wait_reply(timeout=5))["content"])
        assert clients[1].get_guild(added.id) is not None
        assert clients[0].get_guild(added.id) is None
    # The public answers are channel messages too, heard on the same shard.
    assert heard == [
        [
            ("hello g0", guilds[0].id),
            ("hello g2", guilds[2].id),
            ("shard 0", guilds[0].id),
            ("shard 0", guilds[2].id),
        ],
        [
            ("hello g1", guilds[1].id),
            ("hello g3", guilds[3].id),
            ("shard 1", guilds[1].id),
            ("shard 1", guilds[3].id),
        ],
    ]
    assert answers == ["shard 0", "shard 1", "shard 0", "shard 1"]
    assert types[0].count("USER_UPDATE") == 1 and "USER_UPDATE" not in types[1]
    assert types[0].count("INTERACTION_CREATE") == 2 == types[1].count("INTERACTION_CREATE")
    assert sorted((i.shard_id, i.shard_count) for i in fd.identifies) == [(0, 2), (1, 2)]


async def test_auto_sharded_client_follows_the_recommendation(fd: FakeDiscord) -> None:
    guilds = [fd.add_guild(f"g{i}", shard=(i % 2, 2)) for i in range(4)]
    client = shard_client(cls=discord.AutoShardedClient)
    async with running(client, fd=fd):
        assert client.shard_count == 2 and set(client.shards) == {0, 1}
        assert {g.id for g in client.guilds} == {g.id for g in guilds}
        assert {g.id: g.shard_id for g in client.guilds} == {
            g.id: fd.shard_of(g, 2) for g in guilds
        }
    assert [(i.shard_id, i.shard_count) for i in fd.identifies] == [(0, 2), (1, 2)]
    assert [p["shard"] for p in fd.identify_payloads] == [[0, 2], [1, 2]]
    gateway_bot = [q for q in fd.requests if q.path == "/gateway/bot"]
    assert len(gateway_bot) == 1


async def test_gateway_bot_reports_shards_and_concurrency(fd: FakeDiscord) -> None:
    async def asked() -> tuple[int, int]:
        async with shard_client(cls=discord.AutoShardedClient, shard_count=1) as client:
            await client.login(fd.token)
            limits = await client.fetch_session_start_limits()
            return (await client.http.get_bot_gateway())[0], limits.max_concurrency

    assert await asked() == (2, 2)
    fd.recommended_shards, fd.max_concurrency = 16, 4
    assert await asked() == (16, 4)


async def test_invalid_shard_closes_4010(fd: FakeDiscord) -> None:
    fd.add_guild()
    client = shard_client(2, 2)
    with pytest.raises(discord.ConnectionClosed) as caught:
        await asyncio.wait_for(client.start(fd.token), 10)
    assert caught.value.code == 4010
    assert fd.identifies == []


async def test_too_many_guilds_unsharded_closes_4011(monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeDiscord(max_guilds_per_shard=2) as fd:
        monkeypatch.setattr(discord.http.Route, "BASE", fd.api_base)
        monkeypatch.setattr(
            discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fd.gateway_url)
        )
        for i in range(4):
            fd.add_guild(f"g{i}", shard=(i % 2, 2))
        client = shard_client()
        with pytest.raises(discord.ConnectionClosed) as caught:
            await asyncio.wait_for(client.start(fd.token), 10)
        assert caught.value.code == 4011
        sharded = [shard_client(0, 2), shard_client(1, 2)]
        async with running(*sharded, fd=fd):
            assert [len(c.guilds) for c in sharded] == [2, 2]
