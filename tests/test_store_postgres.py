"""PostgreSQL only: the per-model HNSW index is built and used, filtered scans fill k, recall holds.

The behaviour both stores share is in test_store.py, which runs on both databases.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import text

from retrieval.db import create_engine
from retrieval.errors import StoreUnavailable
from retrieval.store import ImageRecord, SearchScope
from retrieval.store.postgres import (
    SEARCH_SETTINGS,
    PgVectorStore,
    index_name,
    search_statement,
)
from tests.records import clustered, exact_top, image_record, near

MODEL = "ViT-B-32/laion2b"
DIM = 512  # CLIP's size; at 64 dims the planner rightly prefers a seq scan over 2000 rows
N = 2000
CHANNELS = 50  # one channel holds 2% of the rows
# Leave the planner only the HNSW scan (every alternative needs a sort or a heap scan).
FORCE_INDEX = (
    "SELECT set_config('enable_seqscan', 'off', true),"
    " set_config('enable_bitmapscan', 'off', true),"
    " set_config('enable_sort', 'off', true)"
)


def record(i: int, vector: np.ndarray, model_id: str = MODEL) -> ImageRecord:
    return image_record(
        i, vector, channels=(100, CHANNELS), authors=7, step=timedelta(hours=1), model_id=model_id
    )


async def explain(conn, stmt) -> str:
    sql = stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    return "\n".join(row[0] for row in await conn.exec_driver_sql(f"EXPLAIN {sql}"))


@pytest.fixture
def vectors() -> np.ndarray:
    return clustered(N, DIM, np.random.default_rng(11))


@pytest.fixture
async def pg_store(postgres_engine, vectors):
    store = PgVectorStore(postgres_engine)
    await store.upsert([record(i, v) for i, v in enumerate(vectors)])
    yield store
    await store.close()


async def test_index_is_built_on_first_search_and_used(pg_store, vectors):
    engine, name = pg_store.engine, index_name(MODEL)
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT to_regclass(:n)"), {"n": name}) is None
    scope = SearchScope(guild_id=1, model_id=MODEL)
    await pg_store.search(vectors[0], scope=scope, k=10)
    async with engine.begin() as conn:
        definition = await conn.scalar(
            text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"), {"n": name}
        )
        await conn.execute(SEARCH_SETTINGS)
        plan = await explain(conn, search_statement(vectors[0], scope=scope, k=10))
    assert "USING hnsw" in definition and "vector_cosine_ops" in definition
    assert f"::vector({DIM})" in definition and f"WHERE ((model_id)::text = '{MODEL}'" in definition
    # The store's own statement, planner left alone: the HNSW scan answers it.
    assert f"Index Scan using {name} on images" in plan, plan


async def test_selective_filter_still_returns_k(pg_store, vectors):
    rng = np.random.default_rng(3)
    channel = 100 + 17
    keep = np.arange(N) % CHANNELS == 17  # 2% of the rows
    scope = SearchScope(guild_id=1, model_id=MODEL, channel_ids=frozenset({channel}))
    await pg_store.search(vectors[0], scope=scope, k=10)  # builds the index
    recalls = []
    for query in near(vectors, rng, 10):
        hits = await pg_store.search(query, scope=scope, k=10)
        assert len(hits) == 10 and {h.channel_id for h in hits} == {channel}
        expected = exact_top(vectors, query, 10, keep)
        recalls.append(len({h.image_key for h in hits} & set(expected)) / 10)
    assert np.mean(recalls) >= 0.95

    # The planner answers that from the channel index; make it walk the HNSW graph instead,
    # which is what it does on big tables, and check the iterative scan is what fills k.
    query = near(vectors, rng, 1)[0]
    stmt = search_statement(query, scope=scope, k=10)
    async with pg_store.engine.begin() as conn:
        await conn.execute(SEARCH_SETTINGS)
        await conn.execute(text(FORCE_INDEX))
        assert f"Index Scan using {index_name(MODEL)}" in await explain(conn, stmt)
        rows = (await conn.execute(stmt)).all()
        await conn.execute(text("SELECT set_config('hnsw.iterative_scan', 'off', true)"))
        one_pass = (await conn.execute(stmt)).all()
    assert len(rows) == 10
    assert len({r.image_key for r in rows} & set(exact_top(vectors, query, 10, keep))) >= 9
    assert len(one_pass) < 10  # ef_search candidates, then the filter: ~2% of 100 survive


async def test_hnsw_recall_at_10_against_exact(pg_store, vectors):
    rng = np.random.default_rng(5)
    scope = SearchScope(guild_id=1, model_id=MODEL)
    recalls = []
    for query in near(vectors, rng, 50):
        hits = await pg_store.search(query, scope=scope, k=10)
        expected = exact_top(vectors, query, 10)
        recalls.append(len({h.image_key for h in hits} & set(expected)) / 10)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert pg_store.exact_fallbacks == 0  # every answer came from the index scan
    assert np.mean(recalls) >= 0.95


async def test_model_ids_are_quoted_into_the_index_predicate(postgres_engine):
    """Quotes, backslashes and colons in a model id neither break nor escape the literal, and
    the query's predicate still matches the index's."""
    model = "local:/ckpt/o'brien\\v2.pt"
    rng = np.random.default_rng(8)
    x = clustered(50, 16, rng)
    store = PgVectorStore(postgres_engine)
    await store.upsert([record(i, v, model_id=model) for i, v in enumerate(x)])
    scope = SearchScope(guild_id=1, model_id=model)
    hits = await store.search(x[3], scope=scope, k=5)
    assert [h.image_key for h in hits] == exact_top(x, x[3], 5)
    async with postgres_engine.begin() as conn:
        await conn.execute(text(FORCE_INDEX))
        plan = await explain(conn, search_statement(x[3], scope=scope, k=5))
    assert f"Index Scan using {index_name(model)}" in plan, plan
    assert await store.count(guild_id=1, model_id=model) == 50


async def test_unreachable_server_is_store_unavailable(tmp_path):
    engine = create_engine(f"postgresql+asyncpg://postgres@/postgres?host={tmp_path}")
    store = PgVectorStore(engine)
    try:
        with pytest.raises(StoreUnavailable):
            await store.search(np.ones(4, np.float32), scope=SearchScope(1, MODEL), k=1)
        with pytest.raises(StoreUnavailable):
            await store.upsert([record(0, np.ones(4, np.float32))])
    finally:
        await engine.dispose()
