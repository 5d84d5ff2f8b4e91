"""Bulk writes and deletes (a batch per call, as the pipeline and backfill make them) store and
remove exactly what one write at a time would, on both databases, and searches see exactly the
stored rows: the SQLite store's in-memory matrix is kept in step with every bulk change."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC

import numpy as np
from sqlalchemy import select

from retrieval.database.tables import IndexedImage, IndexJob
from retrieval.indexing import JobQueue
from retrieval.policy.index_policy import IndexPolicy
from retrieval.store import SearchScope
from tests.records import MODEL, job_ref
from tests.records import image_record as record

OPTED_OUT, EXCLUDED, THREAD = 71, 11, 500
N = 600  # more rows than one statement's id list or one copy threshold


def unit_vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 16)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def batch(vs: np.ndarray) -> list:
    """Authors 70..73 rotate, channels 10/11/12 rotate; every 7th row sits in a thread of #11;
    names are not all ASCII and some times come naive (meaning UTC)."""
    made = []
    for i, v in enumerate(vs):
        r = record(i, v, channels=(10, 3), authors=4, filename=f"café {i} ✓.png")
        if i % 7 == 6:
            r = replace(r, channel_id=THREAD, parent_id=EXCLUDED)
        if i % 4 == 0:
            r = replace(r, posted_at=r.posted_at.replace(tzinfo=None))
        made.append(r)
    return made


def allowed(r) -> bool:
    return r.author_id != OPTED_OUT and EXCLUDED not in (r.channel_id, r.parent_id)


async def stored(engine) -> dict[tuple[int, int], np.ndarray]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(IndexedImage.message_id, IndexedImage.image_key, IndexedImage.embedding)
        )
        return {(m, k): np.asarray(v, dtype=np.float32) for m, k, v in rows}


async def assert_search_sees(store, expected: dict, *, model_id: str = MODEL) -> None:
    """Every expected row, each with its stored vector's score, and nothing else."""
    query = unit_vectors(1, 99)[0]
    hits = await store.search(query, scope=SearchScope(1, model_id), k=len(expected) + 50)
    found = {(h.message_id, h.image_key): h.score for h in hits}
    assert set(found) == set(expected)
    for key, score in found.items():
        assert abs(score - float(expected[key] @ query)) < 1e-4, key


async def test_a_bulk_write_stores_exactly_the_permitted_rows_once_each(store, store_engine):
    old, new = unit_vectors(N, 1), unit_vectors(N, 2)
    before = batch(old)
    # Stored before any policy: the first rows, permitted now or not.
    assert await store.upsert(before[:40]) == 40
    await assert_search_sees(store, {(r.message_id, r.image_key): r.embedding for r in before[:40]})
    policy = IndexPolicy(store_engine)
    await policy.opt_out(OPTED_OUT)
    await policy.exclude_channel(guild_id=1, channel_id=EXCLUDED, by=1)

    # Every row again with a new vector, and rows 100..149 a third time (a re-delivery in the
    # same batch: the last one wins).
    records = batch(new) + batch(old)[100:150]
    written = await store.upsert(records)

    expected = {(r.message_id, r.image_key): r.embedding for r in before[:40]}
    expected |= {(r.message_id, r.image_key): r.embedding for r in records if allowed(r)}
    assert written == sum(allowed(r) for r in records) - sum(allowed(r) for r in before[100:150])
    rows = await stored(store_engine)
    assert rows.keys() == expected.keys()
    for key, vector in expected.items():
        np.testing.assert_allclose(rows[key], vector, atol=1e-6)
    # A refused row kept the vector it had (above); searches never show it.
    visible = {key: v for key, v in expected.items() if allowed(records[key[1]])}
    await assert_search_sees(store, visible)
    hits = await store.search(new[0], scope=SearchScope(1, MODEL), k=N)
    for h in hits:
        r = records[h.image_key]
        assert (h.filename, h.channel_id, h.author_id) == (r.filename, r.channel_id, r.author_id)
        assert h.posted_at == r.posted_at.replace(tzinfo=r.posted_at.tzinfo or UTC)


async def test_a_bulk_write_takes_its_jobs_and_skips_images_whose_job_is_gone(store, store_engine):
    records = batch(unit_vectors(N, 3))
    jobs = JobQueue(store_engine, model_id=MODEL)
    await store.search(records[0].embedding, scope=SearchScope(1, MODEL), k=1)  # matrix live
    await jobs.enqueue([job_ref(r) for r in records])
    async with store_engine.connect() as conn:
        ids = dict((await conn.execute(select(IndexJob.message_id, IndexJob.id))).all())
    assert len(ids) == N
    # Messages deleted while their images were encoded: their jobs went with them.
    gone = {r.message_id for r in records[::5]}
    assert await store.delete_messages(gone) == 0

    written = await store.upsert(records, job_ids=[ids[r.message_id] for r in records])

    assert written == N - len(gone)
    async with store_engine.connect() as conn:
        assert not (await conn.execute(select(IndexJob.id))).all()
    rows = await stored(store_engine)
    assert {m for m, _ in rows} == {r.message_id for r in records} - gone
    await assert_search_sees(
        store,
        {(r.message_id, r.image_key): r.embedding for r in records if r.message_id not in gone},
    )


async def test_a_bulk_delete_removes_exactly_its_rows_and_their_jobs(store, store_engine):
    records = [record(i, v) for i, v in enumerate(unit_vectors(N, 4))]
    assert await store.upsert(records) == N
    await store.search(records[0].embedding, scope=SearchScope(1, MODEL), k=1)  # matrix live
    jobs = JobQueue(store_engine, model_id="another-model")  # images queued for a new model
    await jobs.enqueue([job_ref(r) for r in records])

    doomed = {r.message_id for r in records if r.image_key % 3}
    assert await store.delete_messages(sorted(doomed)) == len(doomed)

    kept = [r for r in records if r.message_id not in doomed]
    rows = await stored(store_engine)
    assert set(rows) == {(r.message_id, r.image_key) for r in kept}
    async with store_engine.connect() as conn:
        queued = {m for (m,) in await conn.execute(select(IndexJob.message_id))}
    assert queued == {r.message_id for r in kept}
    await assert_search_sees(store, {(r.message_id, r.image_key): r.embedding for r in kept})


async def test_a_bulk_reindex_moves_rows_to_the_new_models_search(store):
    records = [record(i, v) for i, v in enumerate(unit_vectors(N, 5))]
    assert await store.upsert(records) == N
    await assert_search_sees(store, {(r.message_id, r.image_key): r.embedding for r in records})

    # The first half encoded again by another model: same keys, so the same rows.
    again = [record(i, v, model_id="other") for i, v in enumerate(unit_vectors(N // 2, 6))]
    await store.search(again[0].embedding, scope=SearchScope(1, "other"), k=1)  # loaded, empty
    assert await store.upsert(again) == N // 2

    await assert_search_sees(
        store, {(r.message_id, r.image_key): r.embedding for r in records[N // 2 :]}
    )
    await assert_search_sees(
        store, {(r.message_id, r.image_key): r.embedding for r in again}, model_id="other"
    )
