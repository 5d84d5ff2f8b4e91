"""A batch write the database refuses a row of: the row is found and failed for good with its
reason, the rest is stored, on both databases and through both of PostgreSQL's write paths."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest

from retrieval.database.refusals import isolating, refusal_reason
from retrieval.errors import StoreUnavailable
from retrieval.indexing.jobs import JobQueue
from tests.db.test_jobs import ref
from tests.records import MODEL
from tests.records import image_record as record

# What each database refuses of a record (the jobs queue and the pipeline never hand it such
# values; a writer with a bug could): SQLSTATE or the driver's error.
REFUSED = {
    "postgresql": [
        (dict(filename="nul\x00.png"), "refused:22021"),
        (dict(embedding=np.full(8, np.nan, dtype=np.float32)), "refused:22000"),
    ],
    "sqlite": [
        (dict(filename="lone\ud800.png"), "refused:UnicodeEncodeError"),
        (dict(content_hash="\udfff"), "refused:UnicodeEncodeError"),
    ],
}


@pytest.mark.parametrize("size", [5, 40])  # PostgreSQL: one statement, or a binary COPY
async def test_a_refused_row_is_isolated_from_its_batch(store, store_engine, size):
    queue = JobQueue(store_engine, model_id=MODEL)
    await queue.enqueue([ref(i) for i in range(size)])
    jobs = sorted(await queue.claim(size), key=lambda job: job.ref.image_key)
    vector = np.ones(8, dtype=np.float32) / 8**0.5
    records = [
        record(j.ref.image_key, vector, guild_id=j.ref.guild_id, message_id=j.ref.message_id)
        for j in jobs
    ]
    bad = {
        1: REFUSED[store_engine.dialect.name][0],
        size - 2: REFUSED[store_engine.dialect.name][1],
    }
    for at, (change, _) in bad.items():
        records[at] = dataclasses.replace(records[at], **change)

    async def write(pairs):
        return await store.upsert([r for r, _ in pairs], job_ids=[j.id for _, j in pairs])

    written, refused = await isolating(list(zip(records, jobs, strict=True)), write)
    assert sum(written) == size - 2
    assert [(job.ref.image_key, refusal_reason(exc)) for (_, job), exc in refused] == [
        (at, reason) for at, (_, reason) in sorted(bad.items())
    ]
    # The refused rows' jobs are still there for the caller to fail; the others' are gone.
    assert await queue.waiting(at_most=100) == 2
    for (_, job), exc in refused:
        await queue.fail([job], refusal_reason(exc))
    assert await queue.waiting(at_most=100) == 0
    failed = (await queue.backlog()).failed
    assert failed == Counter(reason for _, reason in bad.values())
    for i, job in enumerate(jobs):
        stored = await store.known_keys(job.ref.message_id, guild_id=job.ref.guild_id)
        assert stored == (set() if i in bad else {job.ref.image_key})


async def test_an_outage_while_isolating_is_raised_for_the_caller_to_wait_out():
    calls = []

    async def write(items):
        calls.append(list(items))
        if len(calls) == 1:
            raise StoreUnavailable("refused", refused="22021")
        raise StoreUnavailable("database error: connection reset")

    with pytest.raises(StoreUnavailable) as outage:
        await isolating([1, 2, 3, 4], write)
    assert outage.value.refused is None and calls == [[1, 2, 3, 4], [1, 2]]
