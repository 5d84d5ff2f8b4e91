"""SQLite's matrices under MATRIX_MEMORY_MB: eviction, reloads, writes while evicted, a guild
kept in 16 bits because float32 would not fit, one larger than the whole budget, and 16-bit
vectors that rank like float32."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import numpy as np
import pytest

from retrieval.store import SearchScope, open_store
from retrieval.store.matrix import GuildMatrix, MatrixFilter, matrix_bytes
from tests.records import DAY0, MODEL, clustered, exact_top, near
from tests.records import image_record as record

GUILDS = (1, 2, 3, 4)
ROWS, DIM = 200, 64
ONE_GUILD = matrix_bytes(rows=ROWS, dim=DIM, half=False)
HALF_GUILD = matrix_bytes(rows=ROWS, dim=DIM, half=True)


def guild_rows(guild_id: int) -> np.ndarray:
    return clustered(ROWS, DIM, np.random.default_rng(guild_id), clusters=8)


def guild_records(guild_id: int, x: np.ndarray, start: int = 0) -> list:
    return [
        record(
            start + i,
            v,
            guild_id=guild_id,
            message_id=guild_id * 100_000 + start + i,
            image_key=guild_id * 100_000 + start + i,
        )
        for i, v in enumerate(x)
    ]


def scope(guild_id: int, **filters) -> SearchScope:
    return SearchScope(guild_id=guild_id, model_id=MODEL, **filters)


def numbers(hits, guild_id: int) -> list[int]:
    return [h.message_id - guild_id * 100_000 for h in hits]


@pytest.fixture
async def guilds(sqlite_engine):
    """Four guilds of 200 rows each in SQLite; the store's budget holds two of them."""
    store = open_store(sqlite_engine, matrix_memory_mb=2.5 * ONE_GUILD / 2**20)
    data = {g: guild_rows(g) for g in GUILDS}
    for g, x in data.items():
        await store.upsert(guild_records(g, x))
    yield store, data
    await store.close()


async def test_loaded_matrices_stay_within_the_budget_and_evicted_guilds_answer_the_same(guilds):
    store, data = guilds
    queries = {
        g: near(x, np.random.default_rng(10 + g), 1)[0].astype(np.float32) for g, x in data.items()
    }
    first = {}
    for g in GUILDS:
        hits = await store.search(queries[g], scope=scope(g), k=10)
        assert numbers(hits, g) == exact_top(data[g], queries[g], 10)
        first[g] = hits
        assert 0 < store.matrices.used_bytes <= store.matrices.limit_bytes
    assert len(store.matrices.loaded()) == 2  # 1 and 2 made way for 3 and 4
    assert (1, MODEL) not in store.matrices
    for g in GUILDS:  # every one of these searches reloads an evicted guild
        assert (g, MODEL) not in store.matrices
        hits = await store.search(queries[g], scope=scope(g), k=10)
        assert hits == first[g]
        assert store.matrices.used_bytes <= store.matrices.limit_bytes
    assert store.matrices.loads == 8


async def test_the_least_recently_searched_guild_is_the_one_evicted(guilds):
    store, data = guilds
    query = data[1][0]
    await store.search(query, scope=scope(1), k=1)
    await store.search(query, scope=scope(2), k=1)
    await store.search(query, scope=scope(1), k=1)  # 1 is used again: 2 is now the oldest
    await store.search(query, scope=scope(3), k=1)
    assert sorted(store.matrices.loaded()) == [(1, MODEL), (3, MODEL)]


async def test_writes_and_deletes_while_evicted_reach_only_sqlite_and_the_reload_sees_them(
    guilds,
):
    store, data = guilds
    for g in (1, 2, 3):  # 1 is evicted by 3
        await store.search(data[g][0], scope=scope(g), k=1)
    assert (1, MODEL) not in store.matrices
    loads = store.matrices.loads
    fresh = clustered(1, DIM, np.random.default_rng(77), clusters=1)
    await store.upsert(guild_records(1, fresh, start=ROWS))
    assert await store.delete_messages([1 * 100_000 + 5]) == 1
    assert (1, MODEL) not in store.matrices
    assert store.matrices.loads == loads  # neither the write nor the delete loaded it

    hits = await store.search(fresh[0], scope=scope(1), k=1)
    assert numbers(hits, 1) == [ROWS]
    hits = await store.search(data[1][5], scope=scope(1), k=ROWS + 1)
    assert 5 not in numbers(hits, 1)
    assert len(hits) == ROWS  # 200 - 1 deleted + 1 written


async def test_two_searches_of_an_evicted_guild_load_it_once(guilds):
    store, data = guilds
    for g in (1, 2, 3):
        await store.search(data[g][0], scope=scope(g), k=1)
    assert (1, MODEL) not in store.matrices
    loads = store.matrices.loads
    a, b = await asyncio.gather(
        store.search(data[1][3], scope=scope(1), k=5),
        store.search(data[1][3], scope=scope(1), k=5),
    )
    assert a == b and numbers(a, 1)[0] == 3
    assert store.matrices.loads == loads + 1


async def test_guilds_loading_at_once_share_the_budget(sqlite_engine, monkeypatch):
    """Two evicted guilds searched together: the second load waits for room rather than
    hold both half-built matrices past the budget."""
    from retrieval.store import sqlite as sqlite_store

    store = open_store(sqlite_engine, matrix_memory_mb=1.5 * ONE_GUILD / 2**20)
    data = {g: guild_rows(g) for g in (1, 2)}
    for g, x in data.items():
        await store.upsert(guild_records(g, x))
    monkeypatch.setattr(sqlite_store, "_LOAD_CHUNK", 20)  # loads of many steps, interleaved
    building: dict[int, GuildMatrix] = {}
    peaks: list[int] = []
    append = sqlite_store._append_rows

    def watched(matrix, rows):
        append(matrix, rows)
        building[id(matrix)] = matrix
        loaded = {id(m): m for key in store.matrices.loaded() if (m := store.matrices.get(key))}
        peaks.append(sum(m.nbytes for m in {**building, **loaded}.values()))

    put = store.matrices.put

    def finished(key, matrix):  # loaded now: counted as such while it stays
        building.pop(id(matrix), None)
        put(key, matrix)

    monkeypatch.setattr(sqlite_store, "_append_rows", watched)
    monkeypatch.setattr(store.matrices, "put", finished)
    hits = await asyncio.gather(*(store.search(data[g][3], scope=scope(g), k=1) for g in (1, 2)))
    assert [numbers(found, g) for found, g in zip(hits, (1, 2), strict=True)] == [[3], [3]]
    assert store.matrices.loads == 2
    # Whatever was building or loaded at any step, never two guilds' worth.
    assert max(peaks) <= ONE_GUILD < store.matrices.limit_bytes
    await store.close()


async def test_a_write_that_grows_a_matrix_past_the_budget_evicts_another(sqlite_engine):
    store = open_store(sqlite_engine, matrix_memory_mb=2.2 * ONE_GUILD / 2**20)
    for g in (1, 2):
        await store.upsert(guild_records(g, guild_rows(g)))
        await store.search(guild_rows(g)[0], scope=scope(g), k=1)
    assert len(store.matrices.loaded()) == 2
    # The matrix of guild 2 is full: one more row grows it by half, past the budget.
    await store.upsert(guild_records(2, guild_rows(9)[:1], start=ROWS))
    assert store.matrices.loaded() == [(2, MODEL)]
    assert store.matrices.used_bytes <= store.matrices.limit_bytes
    await store.close()


async def test_a_guild_too_large_for_float32_is_kept_in_16_bits(sqlite_engine):
    store = open_store(sqlite_engine, matrix_memory_mb=0.9 * ONE_GUILD / 2**20)
    x = guild_rows(1)
    await store.upsert(guild_records(1, x))
    query = near(x, np.random.default_rng(6), 1)[0].astype(np.float32)
    hits = await store.search(query, scope=scope(1), k=10)
    assert numbers(hits, 1) == exact_top(x, query, 10)
    assert store.matrices.get((1, MODEL)).half
    assert store.matrices.used_bytes == HALF_GUILD
    # Scores come from the stored float32 vectors, not from the 16-bit copy.
    (best,) = await store.search(x[7], scope=scope(1), k=1)
    assert best.score == pytest.approx(float(x[7] @ x[7]), abs=1e-6)
    await store.close()


async def test_a_bulk_write_into_a_16_bit_matrix_adds_new_rows_and_replaces_rewritten_ones(
    sqlite_engine,
):
    store = open_store(sqlite_engine, matrix_memory_mb=0.7 * ONE_GUILD / 2**20)
    x = guild_rows(1)
    await store.upsert(guild_records(1, x[:150]))
    await store.search(x[0], scope=scope(1), k=1)
    assert store.matrices.get((1, MODEL)).half
    # One batch: 50 new rows, and rows 0-9 written again with other vectors (a re-index).
    moved = guild_rows(8)[:10]
    await store.upsert(guild_records(1, moved) + guild_records(1, x[150:], start=150))
    x[:10] = moved
    for i in (0, 5, 160, 199):
        query = near(x[i : i + 1], np.random.default_rng(i), 1)[0].astype(np.float32)
        hits = await store.search(query, scope=scope(1), k=10)
        assert numbers(hits, 1) == exact_top(x, query, 10)
    assert len(store.matrices.get((1, MODEL))) == ROWS
    await store.close()


async def test_a_guild_larger_than_the_budget_is_searched_from_sqlite(
    sqlite_engine, monkeypatch, caplog
):
    """Exact answers, filters included, with nothing kept in memory; the operator is told once
    how much memory would keep it loaded."""
    from retrieval.store import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_LOAD_CHUNK", 37)  # several chunks to merge
    store = open_store(sqlite_engine, matrix_memory_mb=0.9 * HALF_GUILD / 2**20)
    x = guild_rows(1)
    await store.upsert(guild_records(1, x))
    query = near(x, np.random.default_rng(5), 1)[0].astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="retrieval.store.sqlite"):
        hits = await store.search(query, scope=scope(1), k=10)
        assert numbers(hits, 1) == exact_top(x, query, 10)
        channel = scope(1, channel_ids=frozenset({11}), exclude_message_id=100_000 + 1)
        hits = await store.search(query, scope=channel, k=10)
        keep = (np.arange(ROWS) % 3 == 1) & (np.arange(ROWS) != 1)
        assert numbers(hits, 1) == exact_top(x, query, 10, keep)
    assert store.matrices.loaded() == [] and store.matrices.loads == 0
    warnings = [r for r in caplog.records if "MATRIX_MEMORY_MB" in r.getMessage()]
    assert len(warnings) == 1
    assert await store.search(np.ones(8, np.float32) / 8**0.5, scope=scope(1), k=5) == []
    await store.close()


async def test_a_date_range_of_a_guild_larger_than_the_budget_is_read_through_its_index(
    sqlite_engine,
):
    """Searched from SQLite, a guild's rows of a date range are all that is read: the dates are
    in the statement, which the (guild_id, model_id, posted_at) index answers."""
    from sqlalchemy import event

    store = open_store(sqlite_engine, matrix_memory_mb=0.9 * HALF_GUILD / 2**20)
    x = guild_rows(1)
    await store.upsert(guild_records(1, x))  # image i posted i days after DAY0
    query = near(x, np.random.default_rng(6), 1)[0].astype(np.float32)
    days = scope(1, after=DAY0 + timedelta(days=50), before=DAY0 + timedelta(days=80))
    keep = (np.arange(ROWS) >= 50) & (np.arange(ROWS) < 80)
    sent: list[tuple[str, tuple]] = []

    def note(conn, cursor, statement, parameters, context, executemany):
        if "FROM images" in statement and "posted_at" in statement:
            sent.append((statement, parameters))

    event.listen(sqlite_engine.sync_engine, "before_cursor_execute", note)
    try:
        hits = await store.search(query, scope=days, k=10)
    finally:
        event.remove(sqlite_engine.sync_engine, "before_cursor_execute", note)
    assert numbers(hits, 1) == exact_top(x, query, 10, keep)
    (statement, parameters), *_ = [(st, p) for st, p in sent if "WHERE" in st]
    async with sqlite_engine.connect() as conn:
        plan = (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)).all()
    (detail,) = [row[-1] for row in plan]
    assert "ix_images_guild_model_posted" in detail and "posted_at>" in detail, detail
    await store.close()


def test_sixteen_bit_vectors_rank_like_float32_at_half_the_memory():
    rng = np.random.default_rng(1)
    x = clustered(5000, 512, rng)
    queries = near(x, rng, 20).astype(np.float32)
    matrices = {}
    for half in (False, True):
        matrix = GuildMatrix(0, capacity=len(x), half=half)
        matrix.append(
            ids=np.arange(len(x)),
            channels=np.arange(len(x)) % 50,
            authors=np.zeros(len(x)),
            posted=np.zeros(len(x)),
            vectors=x,
        )
        matrices[half] = matrix
    assert matrices[True].nbytes < 0.6 * matrices[False].nbytes
    one_channel = MatrixFilter(channel_ids=frozenset({0}))
    for q in queries:
        for where in (MatrixFilter(), one_channel):
            exact = matrices[False].search(q, 10, where)
            half = matrices[True].search(q, 10, where)
            assert {r for r, _ in half} == {r for r, _ in exact}
            np.testing.assert_allclose([s for _, s in half], [s for _, s in exact], atol=2e-4)


async def test_matrix_memory_mb_reaches_the_bots_store(tmp_path):
    from bot.app import open_bot
    from tests.fakediscord import FakeDiscord
    from tests.helpers import bot_settings

    async with FakeDiscord() as fd:
        assert bot_settings(fd, tmp_path).matrix_memory_mb == 1024
        async with open_bot(bot_settings(fd, tmp_path, matrix_memory_mb="256")) as bot:
            assert bot.store.matrices.limit_bytes == 256 * 2**20
