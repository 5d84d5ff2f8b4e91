"""The vector store: idempotent writes, exact search with filters inside, every kind of delete."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from retrieval.store import SearchScope
from tests.records import DAY0, MODEL, exact_top
from tests.records import image_record as record


def unit(rng: np.random.Generator, dim: int = 16) -> np.ndarray:
    v = rng.normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def vectors():
    rng = np.random.default_rng(7)
    return [unit(rng) for _ in range(30)]


@pytest.fixture
async def filled(store, vectors):
    await store.upsert([record(i, v) for i, v in enumerate(vectors)])
    return store


async def test_search_is_exact_and_ordered(filled, vectors):
    query = vectors[4]
    hits = await filled.search(query, scope=SearchScope(guild_id=1, model_id=MODEL), k=5)
    assert [h.message_id - 1000 for h in hits] == exact_top(vectors, query, 5)
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))
    assert hits[0].posted_at == DAY0 + timedelta(days=4)


async def test_upsert_is_idempotent(filled, vectors):
    await filled.upsert([record(i, v) for i, v in enumerate(vectors[:10])])
    assert await filled.count(guild_id=1) == 30
    hits = await filled.search(vectors[0], scope=SearchScope(guild_id=1, model_id=MODEL), k=30)
    assert len({h.message_id for h in hits}) == 30


async def test_filters_apply_inside_the_search(filled, vectors):
    """A filtered search still fills k from the rows that pass, not from a truncated top-k."""
    query = vectors[0]
    scope = SearchScope(guild_id=1, model_id=MODEL, channel_ids=frozenset({11}), author_id=71)
    hits = await filled.search(query, scope=scope, k=4)
    keep = np.array([10 + i % 3 == 11 and 70 + i % 2 == 71 for i in range(len(vectors))])
    expected = exact_top(vectors, query, 4, keep)
    assert [h.message_id - 1000 for h in hits] == expected
    assert len(hits) == 4
    dated = SearchScope(
        guild_id=1,
        model_id=MODEL,
        after=DAY0 + timedelta(days=10),
        before=DAY0 + timedelta(days=20),
    )
    hits = await filled.search(query, scope=dated, k=30)
    assert sorted(h.message_id - 1000 for h in hits) == list(range(10, 20))


async def test_scope_never_crosses_guilds_or_models(filled, vectors):
    await filled.upsert([record(100, vectors[0], guild_id=2, message_id=9000, image_key=9000)])
    await filled.upsert(
        [record(101, vectors[0], model_id="other", message_id=9001, image_key=9001)]
    )
    hits = await filled.search(vectors[0], scope=SearchScope(guild_id=2, model_id=MODEL), k=10)
    assert [h.message_id for h in hits] == [9000]
    hits = await filled.search(vectors[0], scope=SearchScope(guild_id=1, model_id=MODEL), k=50)
    assert 9001 not in {h.message_id for h in hits}
    assert await filled.count(guild_id=1, model_id=MODEL) == 30


async def test_inserts_after_first_search_are_searchable(filled, vectors):
    scope = SearchScope(guild_id=1, model_id=MODEL)
    await filled.search(vectors[0], scope=scope, k=1)  # loads the guild matrix
    fresh = unit(np.random.default_rng(99))
    await filled.upsert([record(50, fresh)])
    hits = await filled.search(fresh, scope=scope, k=1)
    assert hits[0].message_id == 1050


async def test_a_guild_searched_while_empty_takes_its_first_images(store, vectors):
    scope = SearchScope(guild_id=1, model_id=MODEL)
    assert await store.search(vectors[0], scope=scope, k=3) == []
    await store.upsert([record(0, vectors[0])])
    hits = await store.search(vectors[0], scope=scope, k=3)
    assert [h.message_id for h in hits] == [1000]


async def test_deletes_leave_no_vectors(filled, vectors):
    scope = SearchScope(guild_id=1, model_id=MODEL)
    await filled.search(vectors[0], scope=scope, k=1)
    assert await filled.delete_messages([1000, 1001]) == 2
    assert await filled.delete_channels([12]) == 10  # i % 3 == 2 among 2..29
    assert await filled.delete_author(guild_id=1, author_id=71) > 0
    hits = await filled.search(vectors[0], scope=scope, k=30)
    left = {h.message_id - 1000 for h in hits}
    assert left == {i for i in range(2, 30) if i % 3 != 2 and i % 2 == 0}
    assert await filled.count(guild_id=1) == len(left)
    await filled.delete_guild(1)
    assert await filled.count(guild_id=1) == 0
    assert await filled.search(vectors[0], scope=scope, k=5) == []


async def test_edit_removing_an_image_keeps_the_others(store, vectors):
    a = record(0, vectors[0])
    b = record(1, vectors[1], message_id=a.message_id)
    await store.upsert([a, b])
    assert await store.known_keys(a.message_id) == {a.image_key, b.image_key}
    assert await store.delete_images(a.message_id, keep_keys=[b.image_key]) == 1
    assert await store.known_keys(a.message_id) == {b.image_key}


async def test_same_bytes_reuse_the_stored_vector(filled, vectors):
    found = await filled.embedding_for("hash3", MODEL)
    assert np.allclose(found, vectors[3])
    assert await filled.embedding_for("hash3", "other") is None
    many = await filled.embeddings_for(["hash3", "hash5", "unknown"], MODEL)
    assert set(many) == {"hash3", "hash5"} and np.allclose(many["hash5"], vectors[5])
    assert await filled.embeddings_for(["hash3"], "other") == {}


async def test_a_query_from_another_model_size_finds_nothing(filled, vectors):
    """A query vector of the wrong dimension (model switched, index not rebuilt) is no match."""
    scope = SearchScope(guild_id=1, model_id=MODEL)
    assert await filled.search(np.ones(8, np.float32) / 8**0.5, scope=scope, k=5) == []
    assert len(await filled.search(vectors[0], scope=scope, k=5)) == 5


async def test_counts_and_lists_what_a_member_or_guild_has_stored(filled, vectors):
    """What `/privacy status` reports, and the ids lifecycle clean-ups start from."""
    await filled.upsert([record(30, vectors[0], guild_id=2, channel_id=99, author_id=70)])
    assert await filled.count_author(author_id=70) == 16  # 15 in guild 1 (even i), 1 in guild 2
    assert await filled.count_author(author_id=70, guild_id=2) == 1
    assert await filled.count_author(author_id=12345) == 0
    assert await filled.channel_ids(guild_id=1) == {10, 11, 12}
    assert await filled.channel_ids(guild_id=3) == set()
    assert await filled.guild_ids() == {1, 2}
    await filled.delete_author(guild_id=None, author_id=70)
    assert await filled.count_author(author_id=70) == 0
    assert await filled.guild_ids() == {1}


async def test_hits_carry_the_content_hash(filled, vectors):
    (hit,) = await filled.search(vectors[3], scope=SearchScope(guild_id=1, model_id=MODEL), k=1)
    assert hit.content_hash == "hash3"


async def test_a_message_can_be_left_out_and_k_still_fills(filled, vectors):
    query = vectors[6]
    scope = SearchScope(guild_id=1, model_id=MODEL, exclude_message_id=1006)
    hits = await filled.search(query, scope=scope, k=5)
    others = np.arange(len(vectors)) != 6
    assert [h.message_id - 1000 for h in hits] == exact_top(vectors, query, 5, others)


async def test_stored_vectors_by_row_and_by_message(filled, vectors):
    hits = await filled.search(vectors[0], scope=SearchScope(guild_id=1, model_id=MODEL), k=3)
    found = await filled.vectors([h.row_id for h in hits])
    for h in hits:
        np.testing.assert_allclose(found[h.row_id], vectors[h.message_id - 1000], atol=1e-6)
    assert await filled.vectors([]) == {}
    ((key, vector),) = (await filled.message_vectors(1002, MODEL)).items()
    assert key == 2  # image key of row 2, not its message id
    np.testing.assert_allclose(vector, vectors[2], atol=1e-6)
    assert await filled.message_vectors(1002, "another-model") == {}


async def test_vectors_are_counted_per_model(filled, vectors):
    await filled.upsert([record(100, vectors[0], message_id=9000, model_id="other/model")])
    assert await filled.model_counts() == {MODEL: 30, "other/model": 1}


async def test_a_guild_larger_than_a_load_chunk_loads_every_row_and_its_exact_time(
    sqlite_engine, monkeypatch
):
    """The SQLite matrix is loaded chunk by chunk; times keep their microseconds, so a date
    filter cuts exactly where it did when rows were loaded one by one."""
    from retrieval.store import open_store
    from retrieval.store import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_LOAD_CHUNK", 7)
    rng = np.random.default_rng(3)
    vectors = [unit(rng) for _ in range(30)]
    step = timedelta(days=1, microseconds=123_457)
    store = open_store(sqlite_engine)
    await store.upsert([record(i, v, step=step) for i, v in enumerate(vectors)])
    everything = SearchScope(guild_id=1, model_id=MODEL)
    hits = await store.search(vectors[5], scope=everything, k=50)
    assert [h.message_id - 1000 for h in hits] == exact_top(vectors, vectors[5], 30)
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    window = SearchScope(
        guild_id=1, model_id=MODEL, after=DAY0 + 10 * step, before=DAY0 + 20 * step
    )
    hits = await store.search(vectors[5], scope=window, k=50)
    assert sorted(h.message_id - 1000 for h in hits) == list(range(10, 20))
    almost = SearchScope(guild_id=1, model_id=MODEL, after=DAY0 + 10 * step + timedelta(0, 0, 1))
    hits = await store.search(vectors[5], scope=almost, k=50)
    assert min(h.message_id - 1000 for h in hits) == 11
    await store.close()
