"""PostgreSQL only: small guilds searched exactly, large ones through their own HNSW index built
in the background, one scan per search, recall held.

The behaviour both stores share is in test_store.py, which runs on both databases.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import text

from retrieval.database.citus import CITUS_VERSION
from retrieval.database.engine import create_engine
from retrieval.errors import StoreUnavailable
from retrieval.store import ImageRecord, SearchScope
from retrieval.store.pgindex import (
    BUILD_MEMORY,
    PREFIX,
    Layout,
    index_ddl,
    index_name,
    index_state,
)
from retrieval.store.postgres import PgVectorStore, search_settings, search_statement
from tests.conftest import seeded_database
from tests.plans import plan_of, scans_of_images
from tests.records import clustered, exact_top, image_record, near

MODEL = "ViT-B-32/laion2b"
DIM = 512  # CLIP's size; at 64 dims the planner rightly prefers a sort over a few thousand rows
CHANNELS = 50  # one channel holds 2% of a guild's rows
# The thresholds scaled down a hundredfold from the defaults, for tables of a few thousand rows.
LAYOUT = Layout(min_rows=1000, drop_below=250, exact_max_rows=100, recheck_s=0)
# One shard on Citus (of its default 32): there too the small guild's rows lie beside a large
# one's, as in one table, and reading them through the B-tree beats a scan of the shard.
LARGE, SMALL = 1, 15
SIZES = {LARGE: 3000, SMALL: 200}
PROGRESS = text("SELECT count(*) FROM pg_stat_progress_create_index")
# On Citus the shard's index is built on the node holding the shard, by Citus's own connection:
# only that node's view shows it (with worker nodes, the coordinator's shows nothing).
PROGRESS_ON_EVERY_NODE = text(
    "SELECT coalesce(sum(result::int), 0) FROM run_command_on_all_nodes("
    "'SELECT count(*) FROM pg_stat_progress_create_index')"
)


async def building(conn) -> int:
    """How many index builds are running, on every node of a Citus cluster."""
    citus = await conn.scalar(CITUS_VERSION) is not None
    return await conn.scalar(PROGRESS_ON_EVERY_NODE if citus else PROGRESS)


def record(i: int, vector: np.ndarray, *, guild_id: int = LARGE, **overrides) -> ImageRecord:
    values = dict(guild_id=guild_id, model_id=MODEL, message_id=guild_id * 1_000_000 + i)
    return image_record(
        i,
        vector,
        channels=(guild_id * 1000, CHANNELS),
        authors=7,
        step=timedelta(hours=1),
        **(values | overrides),
    )


async def statement_plan(conn, stmt) -> dict:
    sql = stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    return await plan_of(conn, str(sql))


async def explain_search(store, query, scope, k=10) -> list[dict]:
    """The scans of images in the plan of the statement the store would run now."""
    async with store.engine.begin() as conn:
        budget = await store._plan(conn, scope, k)
        await conn.execute(search_settings(budget, citus=await store.on_citus(conn)))
        stmt = search_statement(
            query, scope=scope, k=k, indexed=budget is not None, halfvec=store.layout.halfvec
        )
        return scans_of_images(await statement_plan(conn, stmt))


def _vectors() -> dict[int, np.ndarray]:
    rng = np.random.default_rng(11)
    return {guild: clustered(n, DIM, rng) for guild, n in SIZES.items()}


@pytest.fixture
def vectors() -> dict[int, np.ndarray]:
    return _vectors()


async def _filled(engine) -> PgVectorStore:
    """A store holding both guilds, once its keeper has built what their sizes ask."""
    store = PgVectorStore(engine, layout=LAYOUT, sweep=False)
    for guild, x in _vectors().items():
        await store.upsert([record(i, v, guild_id=guild) for i, v in enumerate(x)])
    await store.indexes.settle()
    async with engine.begin() as conn:
        await conn.execute(text("ANALYZE images"))
        if await store.on_citus(conn):
            shard = text(
                "SELECT get_shard_id_for_distribution_column('images', CAST(:g AS bigint))"
            )
            assert await conn.scalar(shard, {"g": LARGE}) == await conn.scalar(shard, {"g": SMALL})
    return store


async def _two_guilds(engine) -> None:
    await (await _filled(engine)).close()


@pytest.fixture
async def pg_store(request):
    """A store on a copy of the database `_two_guilds` filled once per test process."""
    async with seeded_database(request, "postgres", _two_guilds) as engine:
        store = PgVectorStore(engine, layout=LAYOUT, sweep=False)
        yield store
        await store.close()


async def test_only_the_large_guild_gets_an_index_built_concurrently(postgres_engine):
    store = await _filled(postgres_engine)
    await store.close()
    async with postgres_engine.connect() as conn:
        large = await index_state(conn, LARGE, MODEL)
        small = await index_state(conn, SMALL, MODEL)
        definition = await conn.scalar(
            text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"),
            {"n": index_name(LARGE, MODEL)},
        )
    assert large is not None and large.valid and small is None
    assert store.indexes.builds == 1
    assert "USING hnsw" in definition and "halfvec_cosine_ops" in definition
    assert f"::halfvec({DIM})" in definition
    assert f"guild_id = {LARGE}" in definition and f"'{MODEL}'" in definition


async def test_small_guild_is_searched_exactly_through_the_btree(pg_store, vectors):
    query = vectors[SMALL][5]
    scope = SearchScope(guild_id=SMALL, model_id=MODEL)
    (scan,) = await explain_search(pg_store, query, scope)
    assert scan["Node Type"] in {"Index Scan", "Bitmap Heap Scan", "Index Only Scan"}, scan
    assert "hnsw" not in json.dumps(scan) and not scan.get("Index Name", "").startswith(PREFIX)
    hits = await pg_store.search(query, scope=scope, k=10)
    assert [h.image_key for h in hits] == exact_top(vectors[SMALL], query, 10)
    assert hits[0].score == pytest.approx(1.0, abs=1e-6)


async def test_large_guild_walks_its_own_index_once(pg_store, vectors):
    query = near(vectors[LARGE], np.random.default_rng(2), 1)[0]
    scope = SearchScope(guild_id=LARGE, model_id=MODEL)
    (scan,) = await explain_search(pg_store, query, scope)
    assert scan["Node Type"] == "Index Scan" and scan["Index Name"] == index_name(LARGE, MODEL)
    hits = await pg_store.search(query, scope=scope, k=10)
    expected = exact_top(vectors[LARGE], query, 10)
    assert len({h.image_key for h in hits} & set(expected)) >= 9
    # Scores are float32 ones from the table, not the half precision the index ranks by.
    x = vectors[LARGE]
    for h in hits:
        assert h.score == pytest.approx(float(x[h.image_key] @ query), abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


async def test_selective_filter_on_a_large_guild_is_answered_exactly(pg_store, vectors):
    """2% of the guild's rows pass: fewer than exact_max_rows, so they are read through the
    channel B-tree, not found by a graph walk that would skip 49 of 50 rows it visits."""
    x, rng = vectors[LARGE], np.random.default_rng(3)
    keep = np.arange(len(x)) % CHANNELS == 17
    scope = SearchScope(LARGE, MODEL, channel_ids=frozenset({LARGE * 1000 + 17}))
    query = near(x, rng, 1)[0]
    (scan,) = await explain_search(pg_store, query, scope)
    assert scan["Node Type"] != "Seq Scan" and not scan.get("Index Name", "").startswith(PREFIX), (
        scan
    )
    hits = await pg_store.search(query, scope=scope, k=10)
    assert [h.image_key for h in hits] == exact_top(x, query, 10, keep)
    # A broad filter (20% of the rows, more than exact_max_rows) is given the index: one scan,
    # the index walk or, where the planner costs it lower at this size, the channel B-tree.
    ten = frozenset(LARGE * 1000 + c for c in range(10))
    broad = SearchScope(LARGE, MODEL, channel_ids=ten)
    (scan,) = await explain_search(pg_store, query, broad)
    assert scan["Node Type"] != "Seq Scan", scan
    keep = np.arange(len(x)) % CHANNELS < 10
    recalls = []
    for q in near(x, rng, 20):
        hits = await pg_store.search(q, scope=broad, k=10)
        assert len(hits) == 10
        recalls.append(len({h.image_key for h in hits} & set(exact_top(x, q, 10, keep))) / 10)
    assert np.mean(recalls) >= 0.95
    assert pg_store.two_scans == 0


async def test_search_before_the_index_is_valid_answers_exactly(postgres_engine, vectors):
    x = vectors[LARGE]
    store = PgVectorStore(postgres_engine, layout=LAYOUT, sweep=False)
    store.indexes.note = lambda *args: None  # no builder: the guild stays without its index
    await store.upsert([record(i, v) for i, v in enumerate(x)])
    query = near(x, np.random.default_rng(4), 1)[0]
    scope = SearchScope(LARGE, MODEL)
    (scan,) = await explain_search(store, query, scope)
    assert not scan.get("Index Name", "").startswith(PREFIX)
    hits = await store.search(query, scope=scope, k=10)
    assert [h.image_key for h in hits] == exact_top(x, query, 10)
    await store.close()


async def test_writes_go_on_while_an_index_is_built(postgres_engine, vectors):
    """The build is CONCURRENTLY: inserts and deletes into the table finish while it runs."""
    x = vectors[LARGE]
    store = PgVectorStore(postgres_engine, layout=LAYOUT, sweep=False)
    store.indexes.note = lambda *args: None
    await store.upsert([record(i, v) for i, v in enumerate(x)])
    # A new connection's first statement with a vector waits for asyncpg to read the type from
    # the catalog: 6 ms on PostgreSQL, 0.5-1 s on Citus (its catalog query is slow there, build
    # or no build). The writes below take connections that did it already (as many as the pool
    # keeps: the build holds two, the loop below one).
    warm = [record(i, x[i], guild_id=SMALL) for i in range(postgres_engine.pool.size())]
    await asyncio.gather(*(store.upsert([r]) for r in warm))
    await store.delete_messages([r.message_id for r in warm])
    build = asyncio.create_task(store.indexes.check(LARGE, MODEL))
    async with postgres_engine.connect() as conn:
        while not await building(conn):
            await conn.rollback()
            assert not build.done(), build.result()
            await asyncio.sleep(0.005)
    waits, during, i = [], 0, 0
    async with postgres_engine.connect() as conn:
        while not build.done():
            started = time.perf_counter()
            await store.upsert([record(i, x[i], guild_id=SMALL)])
            await store.delete_messages([SMALL * 1_000_000 + i])
            waits.append(time.perf_counter() - started)
            # Finished while the index was still being built (a plain CREATE INDEX would have
            # held both writes until its end).
            during += bool(await building(conn))
            await conn.rollback()
            i += 1
    assert await build == "built"
    assert during >= 3, f"writes waited for the build: {waits}"
    assert max(waits) < 1.0, waits
    await store.close()


async def test_invalid_leftover_of_a_failed_build_is_dropped_and_rebuilt(
    postgres_engine, vectors, caplog
):
    x = vectors[LARGE]
    store = PgVectorStore(postgres_engine, layout=LAYOUT, sweep=False)
    store.indexes.note = lambda *args: None
    await store.upsert([record(i, v) for i, v in enumerate(x)])
    async with postgres_engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("SET statement_timeout = '50ms'"))
        with pytest.raises(Exception, match="statement timeout"):
            await conn.execute(text(index_ddl(LARGE, MODEL, DIM, halfvec=True)))
        await conn.execute(text("RESET statement_timeout"))
        leftover = await index_state(conn, LARGE, MODEL)
    assert leftover is not None and not leftover.valid
    query = near(x, np.random.default_rng(6), 1)[0]
    (scan,) = await explain_search(store, query, SearchScope(LARGE, MODEL))
    assert not scan.get("Index Name", "").startswith(PREFIX)  # an invalid index is never trusted
    with caplog.at_level(logging.WARNING, logger="retrieval.store.pgindex"):
        assert await store.indexes.check(LARGE, MODEL) == "built"
    assert any("INVALID" in r.getMessage() for r in caplog.records)
    async with postgres_engine.connect() as conn:
        assert (await index_state(conn, LARGE, MODEL)).valid
    await store.close()


async def test_a_guild_that_shrinks_far_below_the_threshold_loses_its_index(pg_store):
    await pg_store.delete_messages([LARGE * 1_000_000 + i for i in range(SIZES[LARGE] - 100)])
    assert await pg_store.indexes.check(LARGE, MODEL) == "dropped"
    async with pg_store.engine.connect() as conn:
        assert await index_state(conn, LARGE, MODEL) is None


async def test_vectors_are_kept_in_the_row_not_in_toast(postgres_engine):
    """Exact searches read each candidate's vector: out of line in the TOAST table, each read
    costs an index lookup and more pages (a 2% channel of a 200k-row guild took 3.4x as long).
    Revision 0008 keeps CLIP-sized vectors in the row, both when written one by one and by COPY."""
    store = PgVectorStore(postgres_engine, layout=LAYOUT, sweep=False)
    x = clustered(40, DIM, np.random.default_rng(9))
    await store.upsert([record(0, x[0])])  # one row: the row-by-row INSERT
    await store.upsert([record(i, v) for i, v in enumerate(x[1:], start=1)])  # COPY, staged
    await store.close()
    async with postgres_engine.connect() as conn:
        toasted = await conn.scalar(
            text(
                "SELECT count(*) FROM images WHERE pg_column_toast_chunk_id(embedding) IS NOT NULL"
            )
        )
        stored = await conn.scalar(text("SELECT count(*) FROM images"))
    assert (stored, toasted) == (40, 0)


async def test_model_ids_are_quoted_into_the_index_predicate(postgres_engine):
    """Quotes, backslashes and colons in a model id neither break nor escape the literal, and
    the query's predicate still matches the index's."""
    model = "local:/ckpt/o'brien\\v2.pt"
    x = clustered(1200, DIM, np.random.default_rng(8))
    store = PgVectorStore(postgres_engine, layout=LAYOUT, sweep=False)
    await store.upsert([record(i, v, model_id=model) for i, v in enumerate(x)])
    await store.indexes.settle()
    scope = SearchScope(guild_id=LARGE, model_id=model)
    (scan,) = await explain_search(store, x[3], scope, k=5)
    assert scan["Index Name"] == index_name(LARGE, model)
    hits = await store.search(x[3], scope=scope, k=5)
    assert [h.image_key for h in hits][:3] == exact_top(x, x[3], 3)
    assert await store.count(guild_id=LARGE, model_id=model) == 1200
    await store.close()


async def test_unreachable_server_is_store_unavailable(tmp_path):
    engine = create_engine(f"postgresql+asyncpg://postgres@/postgres?host={tmp_path}")
    store = PgVectorStore(engine)
    try:
        with pytest.raises(StoreUnavailable):
            await store.search(np.ones(4, np.float32), scope=SearchScope(1, MODEL), k=1)
        with pytest.raises(StoreUnavailable):
            await store.upsert([record(0, np.ones(4, np.float32))])
    finally:
        await store.close()
        await engine.dispose()


async def test_upgrade_drops_the_old_index_per_model(postgres_server):
    """Revision 0006 removes the per-model index the old store built at its first search;
    downgrading removes the per-guild ones (the old store builds its own again)."""
    from retrieval.database.engine import downgrade, upgrade
    from tests.conftest import fresh_database

    old = "ix_images_hnsw_" + "0123456789ab"
    async with fresh_database(postgres_server, citus=False, revision="0005") as engine:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    f"CREATE INDEX {old} ON images USING hnsw ((embedding::vector(3))"
                    f" vector_cosine_ops) WHERE model_id = '{MODEL}'"
                )
            )
        await upgrade(engine)
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT to_regclass(:n)"), {"n": old}) is None
        store = PgVectorStore(engine, layout=Layout(min_rows=0, drop_below=0), sweep=False)
        await store.indexes.check(LARGE, MODEL, 3)
        await store.close()
        async with engine.connect() as conn:
            assert (await index_state(conn, LARGE, MODEL)).valid
        await downgrade(engine, "0005")
        async with engine.connect() as conn:
            assert await index_state(conn, LARGE, MODEL) is None


async def test_closing_the_store_during_a_build_stops_it_promptly(postgres_engine):
    """A bot stopped while its keeper builds an index: close() returns within seconds, the
    server stops building, no connection goes back to the pool with the build's settings, and
    the next store drops the INVALID leftover and builds the index."""
    x = clustered(12_000, DIM, np.random.default_rng(12))
    layout = Layout(min_rows=500, drop_below=100, recheck_s=0)
    store = PgVectorStore(postgres_engine, layout=layout, sweep=False)
    await store.upsert([record(i, v) for i, v in enumerate(x)])  # one batch: one build after it
    async with postgres_engine.connect() as conn:
        while not await building(conn):
            await conn.rollback()
            assert store.indexes.builds == 0, "the build ended before it could be interrupted"
            await asyncio.sleep(0.01)
    closing = asyncio.create_task(store.close())
    done, _ = await asyncio.wait({closing}, timeout=5)
    if not done:
        closing.cancel()  # a second cancellation frees the keeper parked by the first
        pytest.fail("close() did not return within 5 s of cancelling a build")
    await closing
    async with postgres_engine.connect() as conn:
        for _ in range(100):  # the server notices the cancellation within moments
            if not await building(conn):
                break
            await conn.rollback()
            await asyncio.sleep(0.05)
        assert not await building(conn), "the build went on after close()"
        leftover = await index_state(conn, LARGE, MODEL)
        assert leftover is None or not leftover.valid
    # Every pooled connection has the server's default build memory, not the keeper's.
    held = [await postgres_engine.connect() for _ in range(3)]
    try:
        for conn in held:
            assert await conn.scalar(text("SHOW maintenance_work_mem")) != BUILD_MEMORY
    finally:
        for conn in held:
            await conn.close()
    again = PgVectorStore(postgres_engine, layout=layout, sweep=False)
    # Still large enough for an index, and built in a fraction of the time 12,000 rows take.
    await again.delete_messages([LARGE * 1_000_000 + i for i in range(600, len(x))])
    assert await again.indexes.check(LARGE, MODEL) == "built"
    async with postgres_engine.connect() as conn:
        assert (await index_state(conn, LARGE, MODEL)).valid
    await again.close()


async def test_a_database_error_raised_by_a_cancellation_still_ends_the_keeper():
    """A statement run while cleaning up after a cancellation fails with a database error; the
    keeper's failure handling must not take that for a failure to retry and carry on."""
    from sqlalchemy.exc import SQLAlchemyError

    from retrieval.store.pgindex import _logged

    parked = asyncio.Event()

    async def keeper_pass():
        with _logged("a pass"):
            try:
                parked.set()
                await asyncio.sleep(60)
            finally:
                raise SQLAlchemyError("Can't reconnect until invalid transaction is rolled back")
        await asyncio.sleep(60)  # where a swallowed cancellation would leave the task

    task = asyncio.create_task(keeper_pass())
    await parked.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=2)


async def test_deleting_a_guild_drops_its_indexes_and_no_other(postgres_engine):
    """A purged guild's HNSW index goes with its rows (in the background, after the delete);
    guild 11's stays, though its index's name begins like guild 1's."""
    x = clustered(1200, DIM, np.random.default_rng(13))
    store = PgVectorStore(postgres_engine, layout=LAYOUT, sweep=False)
    for guild in (LARGE, 11):
        await store.upsert([record(i, v, guild_id=guild) for i, v in enumerate(x)])
    await store.indexes.settle()
    async with postgres_engine.connect() as conn:
        assert (await index_state(conn, LARGE, MODEL)).valid
        assert (await index_state(conn, 11, MODEL)).valid
    assert await store.delete_guild(LARGE) == len(x)
    await asyncio.wait_for(store.indexes.settle(), timeout=10)
    async with postgres_engine.connect() as conn:
        assert await index_state(conn, LARGE, MODEL) is None
        assert (await index_state(conn, 11, MODEL)).valid
    await store.close()


async def test_the_sweep_drops_indexes_left_by_a_purge_that_never_finished(postgres_engine):
    """The process stopped between a guild's delete and the drop of its index: the next
    process's start-up sweep finds the index without rows and drops it."""
    x = clustered(1200, DIM, np.random.default_rng(14))
    store = PgVectorStore(postgres_engine, layout=LAYOUT, sweep=False)
    await store.upsert([record(i, v) for i, v in enumerate(x)])
    await store.upsert([record(i, v, guild_id=SMALL) for i, v in enumerate(x[:10])])
    await store.indexes.settle()
    await store.close()
    async with postgres_engine.begin() as conn:
        await conn.execute(text("DELETE FROM images WHERE guild_id = :g"), {"g": LARGE})
        assert (await index_state(conn, LARGE, MODEL)).valid
    restarted = PgVectorStore(postgres_engine, layout=LAYOUT)  # sweeps at its first search
    await restarted.search(x[0], scope=SearchScope(SMALL, MODEL), k=1)
    await asyncio.wait_for(restarted.indexes.settle(), timeout=10)
    async with postgres_engine.connect() as conn:
        assert await index_state(conn, LARGE, MODEL) is None
    await restarted.close()


async def test_catch_up_leaves_the_background_keeper_alive(postgres_engine):
    """`benchmarks/store.py`'s way to a guild's index. The keeper looked at the guild at its
    first write (too small then) and looks again only after its recheck interval, so settle()
    returns with no index yet; catch_up() builds it in the caller's task. The keeper's own
    task, woken by catch_up's sweep, must find the work taken and wait, not die on an empty
    queue (it did, and the store's close() raised its KeyError)."""
    layout = Layout(min_rows=1000, drop_below=250, exact_max_rows=100, recheck_s=60)
    x = clustered(1200, DIM, np.random.default_rng(15))
    store = PgVectorStore(postgres_engine, layout=layout, sweep=False)
    await store.upsert([record(i, v) for i, v in enumerate(x[:100])])
    await store.upsert([record(i, v) for i, v in enumerate(x[100:], start=100)])
    await store.indexes.settle()
    async with postgres_engine.connect() as conn:
        assert await index_state(conn, LARGE, MODEL) is None  # what the benchmark timed
    assert await store.indexes.catch_up() == {"built": 1}
    hits = await store.search(x[7], scope=SearchScope(LARGE, MODEL), k=10)
    assert hits[0].image_key == 7
    await store.indexes.settle()
    assert not store.indexes._task.done(), store.indexes._task
    await store.close()
