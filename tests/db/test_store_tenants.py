"""Many guilds in one PostgreSQL, the CI version of `python -m benchmarks.store --tenants`: 20k
vectors over 40 guilds of Zipf sizes, thresholds scaled down tenfold. Every size class keeps
recall, every search runs one scan, and each plan reads the index its class should."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import text

from benchmarks.tenants import CHANNELS, MODEL, classes, guild_vectors, records, zipf_sizes
from retrieval.store import SearchScope
from retrieval.store.pgindex import Layout, index_name, index_state
from retrieval.store.postgres import PgVectorStore, search_settings, search_statement
from tests.plans import plan_of, scans_of_images
from tests.records import exact_top, near

N, GUILDS = 20_000, 40
LAYOUT = Layout(min_rows=1000, drop_below=250, exact_max_rows=100, recheck_s=0)


def indexes_read(node: dict) -> set[str]:
    """Every index a plan node reads for its rows, its children's included (a BitmapAnd's,
    say), less the policy's look-ups (subplans)."""
    names = {node["Index Name"]} if "Index Name" in node else set()
    for child in node.get("Plans", []):
        if child.get("Parent Relationship") not in ("SubPlan", "InitPlan"):
            names |= indexes_read(child)
    return names


async def scans(store, query, scope, k) -> list[dict]:
    async with store.engine.begin() as conn:
        budget = await store._plan(conn, scope, k)
        await conn.execute(search_settings(budget, citus=await store.on_citus(conn)))
        stmt = search_statement(query, scope=scope, k=k, indexed=budget is not None)
        sql = stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
        plan = await plan_of(conn, str(sql))
    return scans_of_images(plan)


@pytest.fixture
async def instance(postgres_engine):
    sizes = zipf_sizes(N, GUILDS)
    store = PgVectorStore(postgres_engine, layout=LAYOUT, sweep=False)
    store.indexes.note = lambda *args: None  # loaded first, indexed by the sweep below
    async with postgres_engine.begin() as conn:
        if await store.on_citus(conn):
            # A cluster's shard holds many servers; 40 over Citus's default 32 shards would
            # leave most alone in theirs, where reading the whole shard is the best plan.
            await conn.execute(text("SELECT alter_distributed_table('images', shard_count := 4)"))
    vectors = {}
    for rank, size in enumerate(sizes, start=1):
        vectors[rank] = guild_vectors(rank, int(size))
        await store.upsert(records(rank, vectors[rank]))
    async with postgres_engine.begin() as conn:
        await conn.execute(text("ANALYZE images"))
    outcomes = await store.indexes.catch_up()
    yield store, sizes, vectors, outcomes
    await store.close()


async def test_every_size_class_keeps_recall_in_one_scan(instance):
    store, sizes, vectors, outcomes = instance
    large = int((sizes >= LAYOUT.min_rows).sum())
    assert outcomes == {"built": large, "kept": GUILDS - large}
    chosen = classes(sizes, LAYOUT)
    assert set(chosen) == {"largest", "smallest indexed", "largest exact", "median"}
    async with store.engine.connect() as conn:
        for cls, guild in chosen.items():
            state = await index_state(conn, guild, MODEL)
            assert (state is not None and state.valid) == cls.endswith(("largest", "indexed"))

    for cls, guild in chosen.items():
        x = vectors[guild]
        queries = near(x, np.random.default_rng(guild), 8)
        channel = guild * 1000
        keep = np.arange(len(x)) % CHANNELS == 0
        for scope, mask in (
            (SearchScope(guild, MODEL), None),
            (SearchScope(guild, MODEL, channel_ids=frozenset({channel})), keep),
        ):
            for k in (10, 100):
                (scan,) = await scans(store, queries[0], scope, k)
                assert scan["Node Type"] != "Seq Scan", (cls, scan)
                uses_ann = scan.get("Index Name") == index_name(guild, MODEL)
                assert uses_ann == (
                    scope.channel_ids is None and guild <= chosen.get("smallest indexed", 0)
                ), (cls, scope, k, scan)
                if scope.channel_ids is not None:
                    # The channel's rows through the one index naming guild and channel: an
                    # index on the channel alone had the planner AND in a bitmap of the whole
                    # guild (36 of 69 ms for one channel of a 200,000-image guild).
                    assert indexes_read(scan) == {"ix_images_guild_channel"}, (cls, k, scan)
                recalls = []
                for q in queries:
                    hits = await store.search(q, scope=scope, k=k)
                    truth = exact_top(x, q, k, mask)[: int(len(x) if mask is None else mask.sum())]
                    assert len(hits) == min(k, len(truth))
                    got = {h.image_key for h in hits}
                    recalls.append(len(got & set(truth)) / len(truth))
                assert np.mean(recalls) >= 0.95, (cls, scope, k, recalls)
    assert store.two_scans == 0
