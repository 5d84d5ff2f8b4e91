"""The durable indexing queue on both databases: guarded, idempotent enqueueing; leases; retries
with backoff; permanent failures kept as counts, and those that would fail again not queued
again."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import text

from retrieval.database.tables import OCR_LANE
from retrieval.indexing.jobs import HISTORY, LIVE, ImageRef, JobQueue, RetryPolicy
from retrieval.indexing.submit import Submissions
from retrieval.policy.index_policy import IndexPolicy
from retrieval.store import open_store
from tests.records import MODEL
from tests.records import image_record as record
from tests.refusing import refuse_rows


def ref(i: int, **overrides) -> ImageRef:
    values = dict(
        guild_id=1 + i % 2,
        channel_id=10,
        message_id=1000 + i,
        image_key=i,
        kind="attachment",
        author_id=70,
        posted_at=datetime(2026, 1, 1, tzinfo=UTC),
        url=f"https://cdn.example/attachments/{i}.png?ex=1",
        source_url=f"https://cdn.example/attachments/{i}.png",
        filename=f"img{i}.png",
        content_type="image/png",
        size=100,
    )
    values.update(overrides)
    return ImageRef(**values)


@pytest.fixture
def queue(store_engine):
    return JobQueue(store_engine, model_id=MODEL, lease_s=60, retry=RetryPolicy(0.2, 1.0, 5.0))


async def test_enqueue_is_idempotent_guarded_and_skips_what_is_encoded(queue, store_engine):
    policy = IndexPolicy(store_engine)
    await policy.opt_out(99)
    store = open_store(store_engine)
    # Encoded already: ref(3)'s message, in its guild.
    await store.upsert(
        [record(3, np.ones(4, np.float32), message_id=1003, image_key=3, guild_id=2)]
    )

    await queue.enqueue([ref(i) for i in range(5)] + [ref(9, author_id=99)])
    await queue.enqueue([ref(i) for i in range(5)])  # delivered twice: no second row
    jobs = await queue.claim(100)
    assert sorted(job.ref.image_key for job in jobs) == [0, 1, 2, 4]
    assert jobs[0].ref == ref(jobs[0].ref.image_key)  # everything needed to index it comes back


async def test_what_asks_for_a_smaller_copy_travels_with_the_job(queue, store_engine):
    """The proxy link and the picture's size come back with the claimed job; a row queued
    before they were kept (revision 0014) comes back without them, to be downloaded as it is."""
    proxied = ref(
        1, proxy_url="https://media.example/attachments/1.png?ex=1", width=4032, height=3024
    )
    await queue.enqueue([proxied])
    async with store_engine.begin() as conn:  # as an older release queued it
        await conn.execute(
            text(
                "INSERT INTO index_jobs (guild_id, channel_id, message_id, image_key, kind,"
                " author_id, posted_at, url, source_url, filename, content_type, priority,"
                " attempts, retry_at, created_at) SELECT guild_id, channel_id, 1002, 2, kind,"
                " author_id, posted_at, url, source_url, filename, content_type, priority,"
                " attempts, retry_at, created_at FROM index_jobs"
            )
        )
    jobs = {job.ref.image_key: job.ref for job in await queue.claim(10)}
    assert jobs[1] == proxied
    assert (jobs[2].proxy_url, jobs[2].width, jobs[2].height) == (None, None, None)
    assert jobs[2].url == proxied.url


async def test_text_is_cleaned_and_what_cannot_be_stored_is_counted(queue):
    """Whoever queues (the bot, a worker, a script), the rows are valid for both databases."""
    await queue.enqueue(
        [
            ref(0, filename="a\x00b.png", source_url="https://cdn.example/a\ud800.png"),
            ref(1, filename="x" * 10_000),
            ref(2, message_id=2**64),
            ref(3, source_url="https://poster.example:99999/a.png"),
            ref(4, posted_at=datetime(1, 1, 1, tzinfo=UTC)),
            ref(5),
        ]
    )
    queued = {job.ref.image_key: job.ref for job in await queue.claim(10)}
    assert sorted(queued) == [0, 1, 5]
    assert queued[0].filename == "ab.png"
    assert queued[0].source_url == "https://cdn.example/a.png"
    assert queued[1].filename == "x" * 255
    assert (await queue.backlog(guild_id=1)).failed == {"invalid_id": 1, "invalid_time": 1}
    assert (await queue.backlog(guild_id=2)).failed == {"invalid_url": 1}


async def test_an_image_that_cannot_be_stored_is_counted_once_however_often_it_comes(queue):
    """A message comes again with each edit: the link that does not parse is not counted (or
    logged) again; one whose ids are not valid cannot be kept, and is."""
    unusable = [
        ref(3, source_url="https://poster.example:99999/a.png"),
        ref(4, posted_at=datetime(1, 1, 1, tzinfo=UTC)),
        ref(2, message_id=2**64),
    ]
    for _ in range(3):
        await queue.enqueue(unusable)
    assert (await queue.backlog(guild_id=1)).failed == {"invalid_id": 3, "invalid_time": 1}
    assert (await queue.backlog(guild_id=2)).failed == {"invalid_url": 1}
    assert [message for message, *_ in await failed_images(queue.engine)] == [1003, 1004]


async def test_a_row_the_database_refuses_is_counted_and_the_rest_are_queued(queue, store_engine):
    code = await refuse_rows(store_engine, "index_jobs", filename="poison.png")
    await queue.enqueue([ref(i) for i in range(6)] + [ref(7, filename="poison.png")])
    assert sorted(job.ref.image_key for job in await queue.claim(10)) == list(range(6))
    assert (await queue.backlog(guild_id=2)).failed == {f"refused:{code}": 1}
    assert (await queue.backlog(guild_id=1)).failed == {}


async def test_a_refused_submission_holds_up_neither_its_caller_nor_later_ones(queue, store_engine):
    """Callers waiting on the same write as a refused image return (the image is counted), and
    what comes after is written."""
    await refuse_rows(store_engine, "index_jobs", filename="poison.png")
    submissions = Submissions(queue, written=lambda: None)
    try:
        together = asyncio.gather(
            submissions.write([ref(1), ref(3, filename="poison.png")], HISTORY),
            submissions.write([ref(2)], LIVE),
        )
        await asyncio.wait_for(together, 30)  # a guard: the old code waited forever here
        await asyncio.wait_for(submissions.write([ref(4)], LIVE), 30)
    finally:
        await submissions.close()
    assert sorted(job.ref.image_key for job in await queue.claim(10)) == [1, 2, 4]
    assert sum((await queue.backlog()).failed.values()) == 1


async def test_a_lease_keeps_others_off_until_it_runs_out_or_is_released(queue, store_engine):
    await queue.enqueue([ref(i) for i in range(4)])
    first = await queue.claim(3)
    assert len(first) == 3 and len(await queue.claim(10)) == 1
    assert await queue.claim(10) == []
    assert await queue.release([first[0].id]) == 1
    assert [job.id for job in await queue.claim(10)] == [first[0].id]

    short = JobQueue(store_engine, model_id=MODEL, lease_s=0.2)
    await short.enqueue([ref(7)])
    (job,) = await short.claim(10)
    await asyncio.sleep(0.3)
    assert [again.id for again in await short.claim(10)] == [job.id]  # the consumer "died"


async def test_a_refreshed_url_is_kept_for_the_next_attempts(queue):
    await queue.enqueue([ref(i) for i in range(3)])
    jobs = await queue.claim(10)
    fresh = {jobs[0].id: "https://cdn.example/attachments/0.png?ex=2", jobs[1].id: "b"}
    await queue.set_urls(fresh)
    await queue.release()
    again = {job.id: job.ref.url for job in await queue.claim(10)}
    assert again == {**{job.id: job.ref.url for job in jobs}, **fresh}


async def test_live_images_are_claimed_before_history(queue):
    # One server's history: on a Citus cluster, a job's id comes from the sequence range of the
    # node holding its server's shard, so ids (the order within one enqueue) rise per server.
    await queue.enqueue([ref(i, guild_id=1) for i in range(3)], priority=HISTORY)
    await queue.enqueue([ref(10)], priority=LIVE)
    assert [job.ref.image_key for job in await queue.claim(2)] == [10, 0]


async def test_transient_failures_back_off_then_give_up_as_a_count(queue):
    await queue.enqueue([ref(0), ref(1)])
    job, other = await queue.claim(10)
    delay = await queue.retry(job, reason="http_503", error="HTTP 503")
    assert 0.1 <= delay <= 0.2
    assert await queue.claim(10) == []  # not before its time
    backlog = await queue.backlog(guild_id=job.ref.guild_id)
    assert (backlog.waiting, backlog.retrying) == (0, 1)

    await asyncio.sleep(0.25)
    (again,) = await queue.claim(10)
    assert again.id == job.id and again.attempts == 1
    assert await queue.retry(again, reason="http_429", error="", retry_after=0.5) >= 0.5

    await queue.fail([other], "http_404")
    gone = await queue.retry(again, reason="timeout", error="", retry_after=10.0)  # past 5 s
    assert gone is None
    assert (await queue.backlog()).failed == {"http_404": 1, "gave_up_timeout": 1}
    assert await queue.waiting(at_most=10) == 0


async def test_consumers_claim_disjoint_rows(queue, store_engine):
    await queue.enqueue([ref(i) for i in range(40)])
    others = [JobQueue(store_engine, model_id=MODEL) for _ in range(4)]
    claimed = await asyncio.gather(*(q.claim(15) for q in others))
    ids = [job.id for batch in claimed for job in batch]
    assert len(ids) == len(set(ids)) == 40


def vector(i: int) -> np.ndarray:
    v = np.zeros(8, np.float32)
    v[i % 8] = 1.0
    return v


async def test_a_vector_is_stored_with_its_job_deleted_unless_the_job_was_deleted(queue, store):
    await queue.enqueue([ref(i) for i in range(3)])
    jobs = await queue.claim(10)
    await store.delete_messages([jobs[1].ref.message_id])  # deleted while being encoded
    records = [
        record(job.ref.image_key, vector(job.ref.image_key), message_id=job.ref.message_id)
        for job in jobs
    ]
    assert await store.upsert(records, job_ids=[job.id for job in jobs]) == 2
    assert await queue.waiting(at_most=10) == 0
    assert await store.known_keys(jobs[1].ref.message_id) == set()
    assert await store.known_keys(jobs[0].ref.message_id) == {jobs[0].ref.image_key}


# Each deletion covers ref(1) (message 1001, channel 10, guild 2, author 70) and not ref(2).
DELETIONS = [
    lambda store: store.delete_messages([1001]),
    lambda store: store.delete_channels([10]),
    lambda store: store.delete_guild(2),
    lambda store: store.delete_author(guild_id=None, author_id=70),
    lambda store: store.delete_author(guild_id=2, author_id=70),
    lambda store: store.delete_images(1001, keep_keys=[]),
]


@pytest.mark.parametrize("deletion", DELETIONS)
async def test_every_deletion_takes_the_queued_jobs_it_covers(queue, store, deletion):
    await queue.enqueue([ref(1), ref(2, channel_id=11, author_id=71)])
    await deletion(store)
    assert [job.ref.image_key for job in await queue.claim(10)] == [2]


async def failed_images(engine) -> list[tuple[int, str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT message_id, lane, reason FROM failed_images ORDER BY message_id, lane")
        )
        return [tuple(row) for row in rows]


async def test_an_image_that_would_fail_again_is_not_queued_again(queue, store_engine):
    await queue.enqueue([ref(i) for i in range(3)])
    jobs = {job.ref.image_key: job for job in await queue.claim(10)}
    await queue.fail([jobs[0]], "not_an_image", lasting=True)
    await queue.fail([jobs[1]], "refresh_unavailable")  # this process's lack: not the image's
    assert await queue.retry(jobs[2], reason="timeout", error="", retry_after=10.0) is None

    assert await failed_images(store_engine) == [(1000, "clip", "not_an_image")]
    # Its message edited, history read again, even another model: the one that would fail the
    # same is not queued, neither its vector nor its reading; the others are given a new try.
    reading = JobQueue(store_engine, model_id=MODEL, read_words=True)
    await reading.enqueue([ref(i) for i in range(3)])
    await JobQueue(store_engine, model_id="another-model").enqueue([ref(0)])
    async with store_engine.connect() as conn:
        queued = await conn.execute(text("SELECT image_key, lane FROM index_jobs"))
        assert sorted(tuple(row) for row in queued) == [
            (1, "clip"),
            (1, "ocr"),
            (2, "clip"),
            (2, "ocr"),
        ]
    failed = (await queue.backlog()).failed
    assert failed == {"not_an_image": 1, "refresh_unavailable": 1, "gave_up_timeout": 1}


async def test_a_reading_that_would_fail_again_leaves_the_vector_be(queue, store_engine):
    reading = queue.for_lane(OCR_LANE)
    await JobQueue(store_engine, model_id=MODEL, read_words=True).enqueue([ref(0)])
    await queue.fail(await queue.claim(1), "timeout")  # its vector's job, out of the way
    (job,) = await reading.claim(1)
    await reading.fail([job], "too_large", lasting=True)
    assert await failed_images(store_engine) == [(1000, "ocr", "ocr_too_large")]
    # Another model encodes it again (the reading's limits are its own); it is not read again.
    await JobQueue(store_engine, model_id="another-model", read_words=True).enqueue([ref(0)])
    async with store_engine.connect() as conn:
        queued = await conn.execute(text("SELECT image_key, lane FROM index_jobs"))
        assert [tuple(row) for row in queued] == [(0, "clip")]


@pytest.mark.parametrize("deletion", DELETIONS)
async def test_every_deletion_takes_the_failed_images_it_covers(queue, store, deletion):
    await queue.enqueue([ref(1), ref(2, channel_id=11, author_id=71)])
    await queue.fail(await queue.claim(10), "http_404", lasting=True)
    await deletion(store)
    assert [message for message, *_ in await failed_images(store.engine)] == [1002]


async def test_the_sweep_takes_jobs_that_got_in_before_the_policy(queue, store, store_engine):
    in_thread = ref(3, channel_id=500, parent_id=11, author_id=72)
    await queue.enqueue([ref(1), ref(2, author_id=71), in_thread])
    policy = IndexPolicy(store_engine)
    await policy.opt_out(70)
    await policy.exclude_channel(guild_id=1, channel_id=11, by=1)
    await store.delete_forbidden()
    assert [job.ref.image_key for job in await queue.claim(10)] == [2]


async def test_the_sweep_takes_failed_images_that_got_in_before_the_policy(queue, store):
    in_thread = ref(3, channel_id=500, parent_id=11, author_id=72)
    await queue.enqueue([ref(1), ref(2, author_id=71), in_thread])
    await queue.fail(await queue.claim(10), "not_an_image", lasting=True)
    policy = IndexPolicy(store.engine)
    await policy.opt_out(70)
    await policy.exclude_channel(guild_id=1, channel_id=11, by=1)
    await store.delete_forbidden()
    assert [message for message, *_ in await failed_images(store.engine)] == [1002]
