"""The eraser deletes again once the images on their way at the deletion have landed, so images
in flight stay deleted; with nothing on its way, a deletion is one pass."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace

import numpy as np

from bot.erasure import Eraser
from retrieval.errors import StoreUnavailable
from retrieval.indexing import LIVE, ImageRef, JobQueue
from retrieval.indexing.arrivals import Arrivals
from retrieval.indexing.submit import Submissions
from tests.helpers import eventually
from tests.records import MODEL, image_record


def pipeline() -> SimpleNamespace:
    """What the eraser uses of the pipeline: its arrivals."""
    return SimpleNamespace(arrivals=Arrivals())


class Counting:
    """A deletion that counts its runs and removes ``results`` in turn."""

    def __init__(self, *results: int) -> None:
        self.runs = 0
        self._results = iter(results)

    async def __call__(self) -> int:
        self.runs += 1
        return next(self._results, 0)


async def test_deletes_again_once_what_was_on_its_way_has_landed_unless_undone():
    pipe = pipeline()
    eraser = Eraser(pipe)
    landed = asyncio.Event()

    async def arriving() -> None:
        with pipe.arrivals.carrying():
            await landed.wait()

    carried = asyncio.create_task(arriving())
    await asyncio.sleep(0)  # it is on its way
    message, member = Counting(2, 1), Counting()
    opted_out = True
    assert await eraser.erase(message, what="message 1") == 2
    await eraser.erase(member, what="member 7", still=lambda: opted_out)
    later = Counting(3)
    assert (message.runs, member.runs) == (1, 1)

    opted_out = False  # opted back in before the sweep: their new images must stay
    landed.set()
    await carried
    await eraser.idle()
    # A deletion after the arrival landed has nothing to wait for: one run.
    assert await eraser.erase(later, what="message 2") == 3
    await eraser.idle()
    assert (message.runs, member.runs, later.runs) == (2, 1, 1)
    eraser.close()


async def test_with_nothing_on_its_way_a_deletion_runs_once():
    eraser = Eraser(pipeline())
    deletions = [Counting(1) for _ in range(50)]
    for n, delete in enumerate(deletions):
        assert await eraser.erase(delete, what=f"message {n}") == 1
    await eraser.idle()
    assert [delete.runs for delete in deletions] == [1] * 50
    eraser.close()


async def test_patient_erase_waits_out_a_database_outage(monkeypatch):
    monkeypatch.setattr("retrieval.backoff.FIRST_S", 0.01)
    eraser = Eraser(pipeline())
    outcomes = iter([StoreUnavailable("down"), StoreUnavailable("down"), 3, 0])

    async def delete() -> int:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert await eraser.erase_patiently(delete, what="message 1") == 3
    eraser.close()


async def test_an_image_queued_only_after_its_deletion_is_taken_as_it_lands(store):
    """Why the second run is needed although a deletion takes the jobs it covers: a job row
    written after the deletion (submitted before it) is out of that deletion's reach. The second
    run, once the row is written, takes it before any consumer stores it, or the vector after."""
    jobs = JobQueue(store.engine, model_id=MODEL)
    written_late = asyncio.Event()
    enqueue = jobs.enqueue

    async def enqueue_late(refs, **options) -> None:
        await written_late.wait()
        await enqueue(refs, **options)

    jobs.enqueue = enqueue_late
    submissions = Submissions(jobs, written=lambda: None)
    pipe = pipeline()
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

    async def submit() -> None:  # as IndexingPipeline.submit carries it
        with pipe.arrivals.carrying():
            await submissions.write([ref], LIVE)

    submitted = asyncio.create_task(submit())
    await asyncio.sleep(0.01)
    eraser = Eraser(pipe)
    assert await eraser.erase(lambda: store.delete_messages([1000]), what="message 1000") == 0

    written_late.set()
    await submitted
    # A consumer racing the second run: either it finds its job gone and stores nothing, or
    # the second run deletes what it stored.
    claimed = await jobs.claim(1)
    if claimed:  # else the second run took the job before any consumer could
        vector = np.ones(4, np.float32)
        await store.upsert([image_record(0, vector)], job_ids=[claimed[0].id])

    async def gone() -> bool:
        return not await store.known_keys(1000) and not await jobs.waiting(at_most=1)

    await eventually(gone)
    eraser.close()
