"""Images in threads whose parent channel is unknown, on both databases: revision 0012 fills what
the rows tell and marks the rest unknown; the policy hides and refuses them, their jobs wait, and
the sweep keeps them until the parent is recorded (then sweeps them if the parent is excluded)."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select

from retrieval.database.engine import downgrade, upgrade
from retrieval.database.tables import UNKNOWN_PARENT, IndexedImage, IndexJob
from retrieval.indexing.jobs import ImageRef, JobQueue
from retrieval.policy.index_policy import IndexPolicy
from retrieval.policy.thread_parents import ThreadParents
from retrieval.store import SearchScope
from tests.db.test_jobs import ref
from tests.records import MODEL
from tests.records import image_record as record

GUILD = 1
# Channel 10 holds thread 500; channel 20 holds no thread; 600 and 700 are threads of 10 whose
# rows never named it.
CHANNEL, LONE, THREAD, OLD_THREAD, QUEUED_THREAD = 10, 20, 500, 600, 700


def vector(i: int) -> np.ndarray:
    v = np.zeros(8, np.float32)
    v[i % 8] = 1.0
    return v


def job(i: int, channel_id: int, parent_id: int | None = None) -> ImageRef:
    return ref(i, guild_id=GUILD, channel_id=channel_id, parent_id=parent_id)


async def parents(engine, table) -> dict[int, set[int | None]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(table.channel_id, table.parent_id))
    found: dict[int, set[int | None]] = {}
    for channel_id, parent_id in rows:
        found.setdefault(channel_id, set()).add(parent_id)
    return found


async def legacy_index(store, engine) -> None:
    """Rows as they were before revision 0012: parents only where the cache knew the thread.

    Written by today's code, then taken down to 0011: the code writes columns later revisions
    added, and the downgrade keeps every row while it drops them."""
    await store.upsert(
        [
            record(0, vector(0), channel_id=CHANNEL),
            record(1, vector(1), channel_id=THREAD, parent_id=CHANNEL),
            record(2, vector(2), channel_id=THREAD),  # stored before revision 0003
            record(3, vector(3), channel_id=LONE),
            record(4, vector(4), channel_id=OLD_THREAD),
        ]
    )
    await JobQueue(engine, model_id=MODEL).enqueue(
        [job(5, THREAD), job(6, QUEUED_THREAD), job(7, CHANNEL)]
    )
    await downgrade(engine, "0011")


async def test_the_upgrade_fills_known_parents_and_marks_the_rest_unknown(store, store_engine):
    await legacy_index(store, store_engine)
    await upgrade(store_engine)

    assert await parents(store_engine, IndexedImage) == {
        CHANNEL: {None},  # it holds a thread: no thread itself
        THREAD: {CHANNEL},  # its other row named its channel
        LONE: {UNKNOWN_PARENT},  # a channel or a thread: only Discord can tell
        OLD_THREAD: {UNKNOWN_PARENT},
    }
    assert await parents(store_engine, IndexJob) == {
        THREAD: {CHANNEL},
        QUEUED_THREAD: {UNKNOWN_PARENT},
        CHANNEL: {None},
    }
    assert await ThreadParents(store_engine).unknown() == {GUILD: {LONE, OLD_THREAD, QUEUED_THREAD}}

    await downgrade(store_engine, "0011")
    assert await parents(store_engine, IndexedImage) == {
        CHANNEL: {None},
        THREAD: {CHANNEL},
        LONE: {None},
        OLD_THREAD: {None},
    }
    await upgrade(store_engine)


async def test_unknown_parents_are_hidden_and_wait_until_recorded(store, store_engine):
    await legacy_index(store, store_engine)
    await upgrade(store_engine)
    policy = IndexPolicy(store_engine)
    await policy.load()
    await policy.exclude_channel(guild_id=GUILD, channel_id=CHANNEL, by=1)
    scope = SearchScope(guild_id=GUILD, model_id=MODEL)
    shown = {h.channel_id for h in await store.search(vector(3), scope=scope, k=10)}
    assert shown == set()  # #10 is excluded; the rest's parents are unknown

    # Not swept while unknown (they may be threads of an included channel), nor written anew.
    assert await store.delete_forbidden() == 3  # #10's row, thread 500's two rows (and jobs)
    assert await store.count(guild_id=GUILD) == 2
    assert (
        await store.upsert([record(8, vector(0), channel_id=LONE, parent_id=UNKNOWN_PARENT)]) == 0
    )
    queue = JobQueue(store_engine, model_id=MODEL)
    await queue.enqueue([job(9, LONE, UNKNOWN_PARENT)])
    assert LONE not in await parents(store_engine, IndexJob)
    assert await queue.claim(10) == []  # 700's job waits too

    # Discord says: #20 is no thread, 600 and 700 are threads of the excluded #10.
    recorded = {LONE: None, OLD_THREAD: CHANNEL, QUEUED_THREAD: CHANNEL}
    assert await ThreadParents(store_engine).record(recorded, guild_id=GUILD) == 2
    assert await ThreadParents(store_engine).unknown() == {}
    shown = {h.channel_id for h in await store.search(vector(3), scope=scope, k=10)}
    assert shown == {LONE}
    assert await store.delete_forbidden() == 1  # thread 600's row, and 700's job with it
    assert await store.count(guild_id=GUILD) == 1
    assert await parents(store_engine, IndexJob) == {}
