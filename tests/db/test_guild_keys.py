"""Keys for a database distributed by guild (revision 0007), on both databases: the upgrade keeps
every row and lists each member's servers, the new keys hold, and a member's servers are found
from `author_guilds`."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import inspect, select, text

from retrieval.database.citus import CITUS_VERSION
from retrieval.database.engine import check_schema, current_revision, downgrade, upgrade
from retrieval.database.tables import AuthorGuild
from retrieval.store import open_store
from tests.records import MODEL
from tests.records import image_record as record

# (guild, channel, message, key, author): member 70 posts in guilds 1 and 2, member 71 in 1.
ROWS = [(1, 10, 500, 5, 70), (1, 10, 501, 6, 71), (2, 20, 502, 7, 70), (2, 20, 502, 8, 70)]


async def _keys(engine) -> tuple[list[str], list[list[str]]]:
    def read(sync):
        found = inspect(sync)
        primary = found.get_pk_constraint("images")["constrained_columns"]
        unique = [u["column_names"] for u in found.get_unique_constraints("images")]
        return primary, unique

    async with engine.connect() as conn:
        return await conn.run_sync(read)


async def _skip_on_citus(engine) -> None:
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            if await conn.scalar(CITUS_VERSION) is not None:
                pytest.skip(
                    "revision 0005's keys lack guild_id, which Citus requires of a table "
                    "distributed by it: below 0007 is plain PostgreSQL's and SQLite's"
                )


async def _insert_at_0005(engine) -> None:
    """Rows as revision 0005 stored them, written with plain SQL (no code of this revision)."""
    postgres = engine.dialect.name == "postgresql"
    vector = np.arange(4, dtype=np.float32)
    async with engine.begin() as conn:
        for guild, channel, message, key, author in ROWS:
            await conn.execute(
                text(
                    "INSERT INTO images (guild_id, channel_id, message_id, image_key, kind, "
                    "author_id, posted_at, filename, source_url, content_type, content_hash, "
                    "model_id, embedding) VALUES (:g, :c, :m, :k, 'attachment', :a, :t, 'f.png', "
                    "'https://cdn.example/f.png', 'image/png', 'h', :model, "
                    + ("CAST(:v AS vector))" if postgres else ":v)")
                ),
                {
                    "g": guild,
                    "c": channel,
                    "m": message,
                    "k": key,
                    "a": author,
                    "t": datetime(2026, 1, 1, tzinfo=UTC),
                    "model": MODEL,
                    "v": "[0,1,2,3]" if postgres else vector.tobytes(),
                },
            )


async def test_upgrade_from_0005_keeps_rows_and_lists_members_servers(store_engine):
    await _skip_on_citus(store_engine)
    await downgrade(store_engine, "0005")
    assert await _keys(store_engine) == (["id"], [["message_id", "image_key"]])
    await _insert_at_0005(store_engine)

    await upgrade(store_engine)
    assert await check_schema(store_engine) == await current_revision(store_engine)  # at head
    primary, unique = await _keys(store_engine)
    if store_engine.dialect.name == "postgresql":
        assert primary == ["id", "guild_id"]
    else:
        assert primary == ["id"]  # SQLite's rowid numbers the rows
    assert unique == [["message_id", "image_key", "guild_id"]]

    store = open_store(store_engine)
    try:
        assert await store.count(guild_id=1) == 2 and await store.count(guild_id=2) == 2
        assert await store.known_keys(502, guild_id=2) == {7, 8}
        assert np.array_equal(
            (await store.message_vectors(500, MODEL, guild_id=1))[5], np.arange(4)
        )
        async with store_engine.connect() as conn:
            pairs = (await conn.execute(select(AuthorGuild.author_id, AuthorGuild.guild_id))).all()
        assert sorted(pairs) == [(70, 1), (70, 2), (71, 1)]
        assert await store.author_guild_ids(70) == [1, 2]
        assert await store.guild_ids() == {1, 2}
        assert await store.count_author(author_id=70) == 3

        # The new natural key still makes writes idempotent: the same image replaces its row.
        again = record(0, np.ones(4, np.float32), message_id=500, image_key=5, author_id=70)
        assert await store.upsert([again]) == 1
        assert await store.count(guild_id=1) == 2
        assert await store.delete_author(guild_id=None, author_id=70) == 3
        assert await store.author_guild_ids(70) == []
        assert await store.guild_ids() == {1}
    finally:
        await store.close()


async def test_downgrade_to_0005_keeps_rows(store_engine):
    await _skip_on_citus(store_engine)
    store = open_store(store_engine)
    try:
        await store.upsert([record(i, np.ones(4, np.float32)) for i in range(3)])
    finally:
        await store.close()
    await downgrade(store_engine, "0005")
    assert await _keys(store_engine) == (["id"], [["message_id", "image_key"]])
    async with store_engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM images")) == 3


@pytest.fixture
async def store(store_engine):
    store = open_store(store_engine)
    yield store
    await store.close()


async def test_writes_list_each_members_servers(store):
    vector = np.ones(4, np.float32)
    await store.upsert([record(i, vector, guild_id=1 + i % 3, author_id=70) for i in range(6)])
    await store.upsert([record(9, vector, guild_id=5, author_id=71)])  # a live write
    assert await store.author_guild_ids(70) == [1, 2, 3]
    assert await store.author_guild_ids(71) == [5]
    assert await store.guild_ids() == {1, 2, 3, 5}
    assert await store.count_author(author_id=70) == 6
    assert await store.count_author(author_id=70, guild_id=2) == 2

    await store.delete_guild(2)
    assert await store.author_guild_ids(70) == [1, 3]
    assert await store.guild_ids() == {1, 3, 5}
    assert await store.delete_author(guild_id=None, author_id=70) == 4
    assert await store.count_author(author_id=70) == 0 and await store.guild_ids() == {5}


async def test_an_opted_out_member_gets_no_pair(store, store_engine):
    from retrieval.policy.index_policy import IndexPolicy

    await IndexPolicy(store_engine).opt_out(70)
    await store.upsert([record(i, np.ones(4, np.float32), author_id=70) for i in range(2)])
    assert await store.author_guild_ids(70) == []
    assert await store.guild_ids() == set()


async def test_routed_statements_touch_only_their_guild(store):
    """The same message id in two guilds cannot happen on Discord; here it shows that the
    routed forms look in the named guild only."""
    vector = np.ones(4, np.float32)
    await store.upsert(
        [record(0, vector, guild_id=1, channel_id=10), record(0, vector, guild_id=2, channel_id=10)]
    )
    assert await store.known_keys(1000, guild_id=2) == {0}
    assert await store.embedding_for("hash0", MODEL, guild_id=2) is not None
    assert await store.embedding_for("hash0", MODEL, guild_id=3) is None
    assert await store.delete_messages([1000], guild_id=2) == 1
    assert await store.known_keys(1000, guild_id=2) == set()
    assert await store.known_keys(1000, guild_id=1) == {0}
    assert await store.delete_channels([10], guild_id=2) == 0
    assert await store.delete_images(1000, [], guild_id=2) == 0
    assert await store.delete_channels([10], guild_id=1) == 1


async def test_model_counts_leave_the_configured_model_out(store):
    vector = np.ones(4, np.float32)
    await store.upsert(
        [record(i, vector, model_id=["a", "b", "c"][i % 3], guild_id=1 + i % 2) for i in range(7)]
    )
    assert await store.model_counts() == {"a": 3, "b": 2, "c": 2}
    assert await store.model_counts(other_than="b") == {"a": 3, "c": 2}
    assert await store.model_counts(other_than="z") == {"a": 3, "b": 2, "c": 2}
