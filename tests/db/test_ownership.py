"""Which servers a process looks after unasked: the shard formula, read from discord.py's own
attributes, in Python and as SQL (the policy sweep's share of the rows)."""

from __future__ import annotations

import asyncio

import discord
import pytest
from sqlalchemy import func, select

from bot.ownership import Shards, ownership, shard_of
from retrieval.database.engine import create_engine
from retrieval.database.tables import IndexedImage
from retrieval.policy.index_policy import IndexPolicy
from retrieval.store import open_store
from tests.db.test_store_policy import vectors
from tests.records import image_record as record

# A server created at millisecond T of Discord's epoch has an id from T << 22 to (T + 1 << 22) - 1.
T = 1_000_003  # odd: shard 1 of 2, shard 3 of 4


def guild_at(ms: int, low: int = 0) -> int:
    return (ms << 22) | low


def test_the_shard_is_the_creation_time_modulo_the_count():
    last_of_t = guild_at(T, (1 << 22) - 1)  # worker, process and increment bits all set
    assert shard_of(guild_at(T), 2) == shard_of(last_of_t, 2) == 1
    assert shard_of(last_of_t + 1, 2) == 0  # the next millisecond: the next shard
    assert shard_of(guild_at(T) - 1, 2) == 0
    assert [shard_of(guild_at(T + k), 4) for k in range(5)] == [3, 0, 1, 2, 3]
    assert shard_of(guild_at(T, 12345), 1) == 0
    # Discord's documentation example, and the largest id there can be.
    assert shard_of(175928847299117063, 16) == (175928847299117063 >> 22) % 16 == 4
    assert shard_of(2**63 - 1, 7) == ((2**63 - 1) >> 22) % 7


def test_shards_own_their_servers_and_nothing_else():
    mine = Shards.of(count=4, ids=[1, 3])
    assert [mine.owns(guild_at(T + k)) for k in range(4)] == [True, False, True, False]
    assert not mine.everything and str(mine) == "shards 1, 3 of 4"
    for every in (
        Shards.of(count=None, ids=None),
        Shards.of(count=4, ids=None),
        Shards.of(count=2, ids=[1, 0]),
        Shards.of(count=1, ids=[0]),
    ):
        assert every.everything and all(every.owns(guild_at(T + k)) for k in range(4))
    assert str(Shards()) == "every shard"


def intents() -> discord.Intents:
    return discord.Intents.default()


def test_ownership_is_read_from_a_plain_client():
    assert ownership(discord.Client(intents=intents())).everything  # unsharded: owns everything
    zero = ownership(discord.Client(intents=intents(), shard_id=0, shard_count=2))
    assert zero == Shards(count=2, ids=frozenset({0}))
    assert zero.owns(guild_at(T + 1)) and not zero.owns(guild_at(T))


def test_ownership_is_read_from_an_auto_sharded_client():
    # No count given: Discord's recommended count, every shard of it in this process.
    auto = discord.AutoShardedClient(intents=intents())
    assert ownership(auto).everything
    auto.shard_count = 8  # what discord.py sets as it connects
    assert ownership(auto).everything
    assert ownership(discord.AutoShardedClient(intents=intents(), shard_count=3)).everything
    every = discord.AutoShardedClient(intents=intents(), shard_count=2, shard_ids=[0, 1])
    assert ownership(every).everything
    part = discord.AutoShardedClient(intents=intents(), shard_count=4, shard_ids=[2, 3])
    assert ownership(part) == Shards(count=4, ids=frozenset({2, 3}))
    assert [ownership(part).owns(guild_at(T + k)) for k in range(4)] == [True, False, False, True]


@pytest.mark.parametrize("shards", [Shards.of(count=4, ids=[0, 3]), Shards.of(count=3, ids=[1])])
async def test_the_sql_condition_agrees_with_owns(store, store_engine, shards):
    guilds = [guild_at(T + k, low) for k in range(7) for low in (0, (1 << 22) - 1)]
    guilds.append(2**63 - 1)  # no overflow on either database
    await store.upsert(
        [
            record(i, v, guild_id=g, message_id=5000 + i)
            for i, (g, v) in enumerate(zip(guilds, vectors(len(guilds)), strict=True))
        ]
    )
    async with store_engine.connect() as conn:
        rows = await conn.scalars(
            select(IndexedImage.guild_id).where(shards.condition(IndexedImage.guild_id))
        )
        assert sorted(rows) == sorted(g for g in guilds if shards.owns(g))
        everything = Shards().condition(IndexedImage.guild_id)
        counted = select(func.count(IndexedImage.id)).where(everything)
        assert await conn.scalar(counted) == len(guilds)


async def test_two_processes_sweep_their_own_servers_at_once(store, store_engine):
    """Shard 0's and shard 1's processes sweep side by side: each deletes its servers' rows of an
    opted-out member, neither waits for nor fails on the other, and together they leave none."""
    ours, theirs = guild_at(T + 1), guild_at(T)
    opted_out = 71
    records = [
        record(i, v, guild_id=(ours, theirs)[i % 2], author_id=(opted_out, 70)[i // 2 % 2])
        for i, v in enumerate(vectors(8))
    ]
    assert await store.upsert(records) == 8
    policy = IndexPolicy(store_engine)
    await policy.load()
    await policy.opt_out(opted_out)

    zero, one = Shards.of(count=2, ids=[0]), Shards.of(count=2, ids=[1])
    other = create_engine(store_engine.url.render_as_string(hide_password=False))
    elsewhere = open_store(other)
    try:
        swept = await asyncio.gather(
            store.delete_forbidden(shards=zero), elsewhere.delete_forbidden(shards=one)
        )
    finally:
        await elsewhere.close()
        await other.dispose()
    assert swept == [2, 2]
    assert await store.count(guild_id=ours) == 2 and await store.count(guild_id=theirs) == 2
    assert await store.delete_forbidden() == 0
