"""The schema on Citus: images distributed by guild_id, the policy copied to every node, the
jobs queue on the coordinator (docs/scaling.md, "Running on Citus").

Needs Citus built into the embedded PostgreSQL (`scripts/build-citus.sh`); skipped otherwise,
except the refusal on plain PostgreSQL, which runs everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import text

from retrieval.database.citus import (
    COORDINATOR,
    DISTRIBUTED,
    PLAIN,
    REFERENCE,
    DistributionRefused,
    distribute,
    plan,
    table_kinds,
)
from retrieval.database.tables import Base
from retrieval.errors import CitusUnavailable
from retrieval.store import SearchScope, open_store
from tests.citus import citus_wanted, citus_worker_count
from tests.plans import nodes, plan_of
from tests.records import MODEL, image_record


async def test_distribution_needs_citus(postgres_engine):
    if citus_wanted():
        pytest.skip("this PostgreSQL runs Citus (CLIPFIND_TEST_CITUS)")
    with pytest.raises(CitusUnavailable, match="shared_preload_libraries=citus"):
        await distribute(postgres_engine)


def test_every_table_of_the_schema_has_its_place_on_citus():
    named = [*DISTRIBUTED, *REFERENCE, *COORDINATOR, *PLAIN]
    assert sorted(named) == sorted(t.name for t in Base.metadata.sorted_tables)
    assert len(set(named)) == len(named)


async def test_the_schema_is_distributed_once_and_a_second_run_changes_nothing(citus_engine):
    kinds = await table_kinds(citus_engine)
    wanted = {t: "distributed by guild_id" if k == "distributed" else k for t, k in plan().items()}
    assert {table: kinds.get(table) for table in wanted} == wanted
    assert not set(kinds) & set(PLAIN)
    again = await distribute(citus_engine)
    assert sorted(again.unchanged) == sorted(plan())
    assert again.distributed == again.reference == again.local == []


async def test_with_worker_nodes_every_shard_is_on_a_worker_and_every_node_has_the_policy(
    citus_engine,
):
    """CLIPFIND_TEST_CITUS=N (N >= 2): the images' shards are all on the N workers, none on the
    coordinator, and each reference table has a copy on every node."""
    workers = citus_worker_count()
    if not workers:
        pytest.skip("no worker nodes (CLIPFIND_TEST_CITUS=N with N >= 2 starts them)")
    async with citus_engine.connect() as conn:
        placements = (
            await conn.execute(
                text(
                    "SELECT s.logicalrelid::regclass::text, p.groupid"
                    " FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid)"
                )
            )
        ).all()
        groups = set((await conn.execute(text("SELECT groupid FROM pg_dist_node"))).scalars())
    assert len(groups) == workers + 1  # the coordinator is group 0
    on = {}
    for table, group in placements:
        on.setdefault(table, set()).add(group)
    assert on["images"] == groups - {0}
    assert all(on[table] == groups for table in REFERENCE)


async def test_a_refusal_names_the_table_and_leaves_the_others_done(citus_database):
    """Whatever Citus refuses, the operator learns which table and why, and the others are
    done, so a second run after the fix has only that one left."""
    async with citus_database.begin() as conn:  # a unique key without guild_id, as Citus sees it
        await conn.execute(text("ALTER TABLE images ADD CONSTRAINT one_hash UNIQUE (content_hash)"))
    with pytest.raises(DistributionRefused) as refused:
        await distribute(citus_database)
    assert list(refused.value.refused) == ["images"]
    assert "partition column" in refused.value.refused["images"]
    kinds = await table_kinds(citus_database)
    assert "images" not in kinds
    assert all(kinds[t] == k for t, k in plan().items() if t != "images")


async def test_a_servers_images_are_stored_searched_and_deleted_on_its_shard(citus_engine):
    store = open_store(citus_engine)
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(6, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    try:
        await store.upsert([image_record(i, v, guild_id=1 + i % 2) for i, v in enumerate(vectors)])
        hits = await store.search(vectors[2], scope=SearchScope(guild_id=1, model_id=MODEL), k=2)
        assert hits[0].message_id == 1002
        assert {hit.guild_id for hit in hits} == {1}
        await store.delete_guild(2)
        assert await store.count(guild_id=2) == 0
        assert await store.count(guild_id=1) == 3
    finally:
        await store.close()


def test_the_command_refuses_a_database_without_citus(
    postgres_engine, tmp_path, monkeypatch, caplog, isolated_logging
):
    from bot.cli import main

    if citus_wanted():
        pytest.skip("this PostgreSQL runs Citus (CLIPFIND_TEST_CITUS)")
    monkeypatch.setenv("DATABASE_URL", postgres_engine.url.render_as_string(hide_password=False))
    monkeypatch.chdir(tmp_path)  # no stray .env
    assert main(["citus-distribute"]) == 2
    assert "no Citus extension" in caplog.text


def test_the_command_distributes_the_schema(
    citus_database, tmp_path, monkeypatch, caplog, isolated_logging
):
    from bot.cli import main

    monkeypatch.setenv("DATABASE_URL", citus_database.url.render_as_string(hide_password=False))
    monkeypatch.chdir(tmp_path)
    assert main(["citus-distribute"]) == 0, caplog.text
    assert "distributed by guild_id: images; reference tables: " in caplog.text
    assert main(["citus-distribute"]) == 0  # a second run changes nothing
    assert "distributed by guild_id: none; reference tables: none; coordinator" in caplog.text


async def test_the_background_builder_finds_and_indexes_a_large_server_on_its_shard(citus_engine):
    """The start-up sweep lists servers from `author_guilds` (Citus refuses a recursive query
    over all of `images`), and the large one gets its own index on its shard."""
    from retrieval.store.pgindex import Layout
    from retrieval.store.postgres import PgVectorStore

    layout = Layout(min_rows=40, drop_below=10, exact_max_rows=5)
    store = PgVectorStore(citus_engine, layout=layout, sweep=False)
    store.indexes.note = lambda *args: None  # only the sweep below decides
    rng = np.random.default_rng(9)
    vectors = rng.normal(size=(60, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    try:
        sizes = {1: 50, 2: 10}
        start = 0
        for guild_id, size in sizes.items():
            batch = vectors[start : start + size]
            await store.upsert(
                [image_record(start + i, v, guild_id=guild_id) for i, v in enumerate(batch)]
            )
            start += size
        assert await store.indexes.catch_up() == {"built": 1, "kept": 1}
        hits = await store.search(vectors[7], scope=SearchScope(guild_id=1, model_id=MODEL), k=3)
        assert hits[0].message_id == 1007
    finally:
        await store.close()


async def test_a_searchs_settings_reach_the_node_holding_the_shard(citus_engine):
    """Citus runs the search over its own connection to the shard's node: settings made with
    `set_config` stay behind on the coordinator, and the graph walk would run with pgvector's
    defaults (40 candidates, no iterative scan, sorts allowed)."""
    from retrieval.store.postgres import PgVectorStore, search_settings

    store = PgVectorStore(citus_engine, sweep=False)
    await store.upsert([image_record(0, np.ones(4, np.float32) / 2, guild_id=1)])
    sorted_rows = "SELECT id FROM images WHERE guild_id = 1 ORDER BY posted_at"
    try:
        async with citus_engine.begin() as conn:
            assert await store.on_citus(conn)
            await conn.execute(search_settings(1000, citus=True))  # a walk: sorts discouraged
            sorts = [n for n in nodes(await plan_of(conn, sorted_rows)) if n["Node Type"] == "Sort"]
        assert sorts and all(n["Disabled"] for n in sorts), sorts
    finally:
        await store.close()
