"""A model switch: cursors start over once, vectors are replaced in place, leftovers go."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import numpy as np
import pytest
from sqlalchemy import text

from retrieval.database.engine import create_engine
from retrieval.database.state import get_state
from retrieval.errors import ModelSwitched
from retrieval.indexing.cursors import BackfillCursors, Cursor
from retrieval.indexing.jobs import JobQueue
from retrieval.indexing.model_switch import INDEX_MODEL_KEY, adopt_model
from retrieval.store import SearchScope, open_store
from retrieval.store.allowed import check_model
from tests.db.test_store import unit
from tests.helpers import eventually
from tests.records import MODEL, job_ref
from tests.records import image_record as record

NEW = "tiny-clip/file-000000000000"


async def test_switching_models_restarts_backfill_once(store, store_engine, caplog):
    cursors = BackfillCursors(store_engine)
    done = Cursor(channel_id=10, guild_id=1, oldest_id=1, newest_id=9, complete=True)
    rng = np.random.default_rng(1)

    assert await adopt_model(store_engine, store, MODEL) == {}  # a new index: nothing to redo
    await store.upsert([record(i, unit(rng)) for i in range(3)])
    await cursors.save(done)
    assert await adopt_model(store_engine, store, MODEL) == {}  # same model again
    assert await cursors.get(10) == done

    caplog.set_level(logging.WARNING, logger="retrieval.indexing.model_switch")
    assert await adopt_model(store_engine, store, NEW) == {MODEL: 3}
    assert await cursors.get(10) is None  # every channel is read again
    assert "re-indexing 3 images" in caplog.text

    # Restarted in the middle of the re-index: the walk resumes, it does not start over.
    partly = Cursor(channel_id=10, guild_id=1, newest_id=9, oldest_id=5)
    await cursors.save(partly)
    assert await adopt_model(store_engine, store, NEW) == {MODEL: 3}
    assert await cursors.get(10) == partly


async def test_reencoded_rows_change_model_in_place_and_the_rest_can_go(store):
    rng = np.random.default_rng(2)
    old = [record(i, unit(rng), channel_id=10) for i in range(3)]
    await store.upsert(old)
    assert await store.known_keys(old[0].message_id, NEW) == set()
    assert await store.known_keys(old[0].message_id) == {old[0].image_key}

    # A new model often has another width (ViT-B-32 512, ViT-L-14 768): same row, new size.
    fresh = record(0, unit(rng, dim=24), channel_id=10, model_id=NEW)
    await store.upsert([fresh])
    assert await store.known_keys(fresh.message_id, NEW) == {fresh.image_key}
    assert await store.model_counts() == {MODEL: 2, NEW: 1}  # replaced, not added

    elsewhere = record(7, unit(rng), channel_id=11)
    await store.upsert([elsewhere])
    assert await store.delete_other_models(10, NEW) == 2
    assert await store.model_counts() == {NEW: 1, MODEL: 1}  # the other channel waits its turn
    hits = await store.search(fresh.embedding, scope=SearchScope(guild_id=1, model_id=NEW), k=5)
    assert [h.message_id for h in hits] == [fresh.message_id]


async def test_only_what_the_age_window_re_read_loses_its_old_vector(store):
    """With BACKFILL_MAX_AGE_DAYS the walk reads messages from one id on; older images are
    still on Discord and keep the old model's vector."""
    rng = np.random.default_rng(3)
    await store.upsert([record(i, unit(rng), channel_id=10) for i in range(5)])  # 1000…1004
    await store.upsert([record(1, unit(rng, dim=24), channel_id=10, model_id=NEW)])
    assert await store.delete_other_models(10, NEW, since_message_id=1002) == 3
    assert await store.model_counts() == {MODEL: 1, NEW: 1}
    assert await store.known_keys(1000, MODEL) == {0}  # older than the window: kept
    assert await store.known_keys(1001, NEW) == {1}


async def test_an_image_still_queued_keeps_its_old_vector_until_the_new_one_replaces_it(
    store, store_engine
):
    rng = np.random.default_rng(4)
    old = [record(i, unit(rng), channel_id=10) for i in range(3)]  # messages 1000…1002
    await store.upsert(old)
    waiting = old[1]
    await JobQueue(store_engine, model_id=NEW).enqueue([job_ref(waiting)])
    assert await store.delete_other_models(10, NEW, guild_id=1) == 2
    assert await store.known_keys(waiting.message_id, MODEL) == {waiting.image_key}
    assert await store.model_counts() == {MODEL: 1}


async def test_processes_starting_together_switch_models_once(postgres_engine, caplog):
    """Every process of a cluster adopts the new model as it starts: the cursors are reset by
    the first alone, or a later one would throw away what the first has re-indexed since."""
    url = postgres_engine.url.render_as_string(hide_password=False)
    engines = [postgres_engine, *(create_engine(url) for _ in range(3))]
    stores = [open_store(engine) for engine in engines]
    try:
        await adopt_model(postgres_engine, stores[0], MODEL)
        await stores[0].upsert([record(i, unit(np.random.default_rng(4))) for i in range(3)])
        await BackfillCursors(postgres_engine).save(Cursor(10, 1, 1, 9, complete=True))

        caplog.set_level(logging.INFO, logger="retrieval.indexing.model_switch")
        starts = zip(engines, stores, strict=True)
        seen = await asyncio.gather(*(adopt_model(e, s, NEW) for e, s in starts))
        assert seen == [{MODEL: 3}] * 4  # each process knows to re-index
        assert caplog.text.count("re-indexing 3 images") == 1
        assert caplog.text.count("re-indexing with") == 3
        assert await BackfillCursors(postgres_engine).get(10) is None
        assert await get_state(postgres_engine, INDEX_MODEL_KEY) == NEW
    finally:
        for store in stores:
            await store.close()
        for engine in engines[1:]:
            await engine.dispose()


async def test_vectors_of_a_model_the_index_left_are_never_stored(store, store_engine):
    """A consumer that encoded an image before the switch and stores it after: nothing is
    stored, and the job stays for a consumer with the index's model."""
    await adopt_model(store_engine, store, MODEL)
    queue = JobQueue(store_engine, model_id=MODEL)
    old = record(0, unit(np.random.default_rng(5)), channel_id=10)
    await queue.enqueue([job_ref(old)])
    (job,) = await queue.claim(1)
    assert await adopt_model(store_engine, store, NEW) == {}  # switched while it encoded

    with pytest.raises(ModelSwitched) as refused:
        await store.upsert([old], job_ids=[job.id])
    assert (refused.value.recorded, refused.value.ours) == (NEW, MODEL)
    assert await store.model_counts() == {}
    assert await queue.waiting(at_most=10) == 1
    fresh = dataclasses.replace(old, model_id=NEW, embedding=unit(np.random.default_rng(6)))
    assert await store.upsert([fresh], job_ids=[job.id]) == 1
    assert await store.model_counts() == {NEW: 1} and await queue.waiting(at_most=10) == 0


async def test_a_model_switch_waits_for_writes_already_under_way(postgres_engine):
    """A write checks the model first and holds that check until it commits: a switch cannot
    slip in between, where the write would store the old model's vector after the switch."""
    store = open_store(postgres_engine)
    try:
        await adopt_model(postgres_engine, store, MODEL)
        async with postgres_engine.connect() as writing:
            await writing.begin()
            await check_model(writing, [record(0, unit(np.random.default_rng(7)))])
            switching = asyncio.create_task(adopt_model(postgres_engine, store, NEW))
            await eventually(lambda: _lock_waits(postgres_engine))
            assert not switching.done()
            await writing.commit()
        await asyncio.wait_for(switching, 30)
        assert await get_state(postgres_engine, INDEX_MODEL_KEY) == NEW
    finally:
        await store.close()


async def _lock_waits(engine) -> bool:
    async with engine.connect() as conn:
        waiting = await conn.scalar(
            text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        )
    return waiting > 0
