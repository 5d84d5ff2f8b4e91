"""The eraser deletes again once the pipeline drains, so images in flight stay deleted."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import numpy as np

from bot.erasure import Eraser
from retrieval.errors import StoreUnavailable
from retrieval.indexing import LIVE, ImageRef, JobQueue
from retrieval.indexing.submit import Submissions
from tests.records import MODEL, image_record


class Pipeline:
    def __init__(self) -> None:
        self.drained = asyncio.Event()

    async def join(self) -> None:
        await self.drained.wait()


async def test_deletes_again_after_the_pipeline_drains_unless_undone():
    pipeline = Pipeline()
    eraser = Eraser(pipeline)
    calls = {"message": 0, "member": 0}
    results = iter([2, 1])  # the second run finds an image written while it was in flight

    async def delete_message() -> int:
        calls["message"] += 1
        return next(results)

    async def delete_member() -> int:
        calls["member"] += 1
        return 0

    opted_out = True
    assert await eraser.erase(delete_message, what="message 1") == 2
    await eraser.erase(delete_member, what="member 7", still=lambda: opted_out)
    await asyncio.sleep(0.01)
    assert calls == {"message": 1, "member": 1}  # nothing more while images are in flight

    opted_out = False  # opted back in before the sweep: their new images must stay
    pipeline.drained.set()
    await asyncio.sleep(0.01)
    assert calls == {"message": 2, "member": 1}
    eraser.close()


async def test_patient_erase_waits_out_a_database_outage(monkeypatch):
    monkeypatch.setattr("retrieval.patience.FIRST_S", 0.01)
    pipeline = Pipeline()
    pipeline.drained.set()
    eraser = Eraser(pipeline)
    outcomes = iter([StoreUnavailable("down"), StoreUnavailable("down"), 3, 0])

    async def delete() -> int:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert await eraser.erase_patiently(delete, what="message 1") == 3
    eraser.close()


async def test_an_image_queued_only_after_its_deletion_is_swept_once_indexed(store):
    """Why the second run is needed although a deletion takes the jobs it covers: a job row
    written after the deletion (submitted before it) is out of that deletion's reach."""
    jobs = JobQueue(store.engine, model_id=MODEL)
    written_late = asyncio.Event()
    enqueue = jobs.enqueue

    async def enqueue_late(refs, **options) -> None:
        await written_late.wait()
        await enqueue(refs, **options)

    jobs.enqueue = enqueue_late
    submissions = Submissions(jobs, written=lambda: None)
    ref = ImageRef(
        guild_id=1,
        channel_id=10,
        message_id=1000,
        image_key=0,
        kind="attachment",
        author_id=70,
        posted_at=datetime(2026, 1, 1, tzinfo=UTC),
        url="https://cdn.example/u",
        source_url="https://cdn.example/u",
        filename="img0.png",
    )
    submitted = asyncio.create_task(submissions.write([ref], LIVE))
    await asyncio.sleep(0.01)
    pipeline = Pipeline()
    eraser = Eraser(pipeline)
    assert await eraser.erase(lambda: store.delete_messages([1000]), what="message 1000") == 0

    written_late.set()
    await submitted
    (job,) = await jobs.claim(1)  # the pipeline indexes it: nothing had deleted its job
    assert await store.upsert([image_record(0, np.ones(4, np.float32))], job_ids=[job.id]) == 1
    pipeline.drained.set()
    for _ in range(100):
        if not await store.known_keys(1000):
            break
        await asyncio.sleep(0.02)
    assert await store.known_keys(1000) == set()
    eraser.close()
