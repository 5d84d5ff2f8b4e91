"""Opt-outs and exclusions enforced by the database: the write refuses, the search hides, the
sweep deletes, whatever another process (here: another engine on the same database) remembers."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

from retrieval.database.engine import create_engine
from retrieval.policy.index_policy import IndexPolicy
from retrieval.store import SearchScope
from tests.records import MODEL
from tests.records import image_record as record

OPTED_OUT, EXCLUDED, THREAD = 71, 11, 500


@contextlib.asynccontextmanager
async def other_process(engine):
    """A second engine (a second process, as far as the database can tell) and its policy."""
    other = create_engine(engine.url.render_as_string(hide_password=False))
    try:
        policy = IndexPolicy(other)
        await policy.load()
        yield policy
    finally:
        await other.dispose()


def vectors(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    return list(x / np.linalg.norm(x, axis=1, keepdims=True))


def rows(vs: list[np.ndarray]):
    """Authors 70/71 alternate; channels 10/11/12 rotate; rows 9+ sit in a thread of #11."""
    made = [record(i, v, channels=(10, 3)) for i, v in enumerate(vs)]
    return [
        record(i, v, channel_id=THREAD, parent_id=EXCLUDED) if i >= 9 else r
        for i, (r, v) in enumerate(zip(made, vs, strict=True))
    ]


def allowed(r) -> bool:
    return r.author_id != OPTED_OUT and EXCLUDED not in (r.channel_id, r.parent_id)


async def test_the_write_itself_refuses_what_another_process_forbade(store, store_engine):
    vs = vectors(12)
    async with other_process(store_engine) as elsewhere:
        await elsewhere.opt_out(OPTED_OUT)
        await elsewhere.exclude_channel(guild_id=1, channel_id=EXCLUDED, by=1)
    records = rows(vs)
    written = await store.upsert(records)
    keep = [r for r in records if allowed(r)]
    assert written == len(keep) and 0 < written < len(records)
    hits = await store.search(vs[0], scope=SearchScope(guild_id=1, model_id=MODEL), k=50)
    assert {h.message_id for h in hits} == {r.message_id for r in keep}


async def test_rows_that_slipped_in_are_never_shown_and_the_sweep_deletes_them(store, store_engine):
    vs = vectors(12)
    records = rows(vs)
    assert await store.upsert(records) == len(records)  # before any policy
    scope = SearchScope(guild_id=1, model_id=MODEL)
    await store.search(vs[1], scope=scope, k=3)  # the SQLite store now holds them in memory
    async with other_process(store_engine) as elsewhere:
        await elsewhere.opt_out(OPTED_OUT)
        await elsewhere.exclude_channel(guild_id=1, channel_id=EXCLUDED, by=1)

    keep = {r.message_id for r in records if allowed(r)}
    for query in vs:  # every query still gets its k results, all of them allowed
        hits = await store.search(query, scope=scope, k=3)
        assert len(hits) == 3 and {h.message_id for h in hits} <= keep
    assert await store.count(guild_id=1) == len(records)

    assert await store.delete_forbidden() == len(records) - len(keep)
    assert await store.count(guild_id=1) == len(keep)
    assert await store.delete_forbidden() == 0


@pytest.mark.parametrize("change", ["opt_out", "exclude"])
async def test_another_processes_change_reaches_the_hint_within_two_seconds(store_engine, change):
    here = IndexPolicy(store_engine)
    await here.load()
    watching = asyncio.create_task(here.watch(interval_s=0.2))
    try:
        async with other_process(store_engine) as elsewhere:
            if change == "opt_out":
                await elsewhere.opt_out(OPTED_OUT)
            else:
                await elsewhere.exclude_channel(guild_id=1, channel_id=EXCLUDED, by=1)
        start = asyncio.get_running_loop().time()
        while here.allows(channel_id=THREAD, author_id=OPTED_OUT, parent_id=EXCLUDED):
            assert asyncio.get_running_loop().time() - start < 2.0, "not seen within 2 s"
            await asyncio.sleep(0.05)
    finally:
        watching.cancel()
