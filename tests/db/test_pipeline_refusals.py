"""What the database or the model gives that cannot be stored holds up nothing: a vector that is
not finite, a row the database refuses, a worker still on the model the index left. The rest of
the batch is stored; the bad image is counted by reason, or handed back for the right model."""

from __future__ import annotations

import asyncio
import io
import logging

import numpy as np
from PIL import Image

from retrieval.indexing.model_switch import adopt_model
from tests.db import test_pipeline
from tests.db.test_pipeline import job_queue, ref, running_pipeline
from tests.helpers import eventually
from tests.refusing import refuse_rows
from tests.tinyclip.shapes import draw, png_bytes

host = test_pipeline.host  # the image host the pipeline's tests download from

JOIN_S = 60  # a guard: what these tests fix used to wait forever


def flat_png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(out, format="PNG")
    return out.getvalue()


def nan_for_flat(batch: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """The vectors, NaN for each picture of one colour: as a model in half precision can
    overflow on some input."""
    vectors = np.array(vectors)
    flat = np.ptp(batch.reshape(len(batch), batch.shape[1], -1), axis=2).max(axis=1) == 0
    vectors[flat] = np.nan
    return vectors


class NaNForFlatPictures:
    """The tiny model, answering NaN for pictures of one colour."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.model_id, self.dim, self.spec = inner.model_id, inner.dim, inner.spec

    def encode_images(self, batch):
        return nan_for_flat(batch, self.inner.encode_images(batch))

    def encode_texts(self, texts):
        return self.inner.encode_texts(texts)


def pictures(host, count: int, *, seed: int) -> list[str]:
    names = []
    for i in range(count):
        name = f"p{seed + i}.png"
        host.files[name] = (png_bytes(draw("green", "circle", rng=seed + i)), "image/png")
        names.append(name)
    return names


async def test_a_vector_that_is_not_finite_is_counted_and_its_batch_stored(
    host,
    store,
    tiny_encoder,
    caplog,
):
    names = pictures(host, 5, seed=10)
    host.files["flat.png"] = (flat_png((90, 90, 90)), "image/png")
    caplog.set_level(logging.WARNING, logger="retrieval.indexing.pipeline")
    encoder = NaNForFlatPictures(tiny_encoder)
    async with running_pipeline(encoder, store, origins=host.origin) as pipe:
        await pipe.submit([ref(host, n, 100 + i) for i, n in enumerate([*names, "flat.png"])])
        await asyncio.wait_for(pipe.join(), JOIN_S)
        assert pipe.counters.failed == {"non_finite_vector": 1}
        assert pipe.counters.indexed == 5
        assert (await pipe.jobs.backlog(1)).failed == {"non_finite_vector": 1}
        assert await pipe.jobs.waiting(at_most=10) == 0
    assert await store.count(guild_id=1) == 5
    assert not await store.known_keys(105)
    assert "flat.png of message 105" in caplog.text and "non_finite_vector" in caplog.text


async def test_a_row_the_database_refuses_is_failed_for_good_and_its_batch_stored(
    host,
    store,
    store_engine,
    tiny_encoder,
    caplog,
):
    code = await refuse_rows(store_engine, "images", filename="poison.png")
    names = pictures(host, 6, seed=20)
    host.files["poison.png"] = (png_bytes(draw("red", "star", rng=29)), "image/png")
    caplog.set_level(logging.WARNING, logger="retrieval.indexing.pipeline")
    async with running_pipeline(tiny_encoder, store, origins=host.origin) as pipe:
        batch = [ref(host, n, 200 + i) for i, n in enumerate(names)]
        await pipe.submit([*batch[:3], ref(host, "poison.png", 299), *batch[3:]])
        await asyncio.wait_for(pipe.join(), JOIN_S)
        # Later images go on as ever.
        host.files["later.png"] = (png_bytes(draw("blue", "square", rng=30)), "image/png")
        await pipe.submit([ref(host, "later.png", 300)])
        await asyncio.wait_for(pipe.join(), JOIN_S)
        assert pipe.counters.failed == {f"refused:{code}": 1}
        assert (await pipe.jobs.backlog(1)).failed == {f"refused:{code}": 1}
        assert await pipe.jobs.waiting(at_most=10) == 0
    assert await store.count(guild_id=1) == 7
    assert not await store.known_keys(299)
    assert "poison.png of message 299" in caplog.text


async def test_a_consumer_on_the_model_the_index_left_hands_its_jobs_back(
    host,
    store,
    store_engine,
    tiny_encoder,
    caplog,
):
    """The index switched models while this consumer still encodes with the old one: what it
    would store could never be found, and the switch's clean-up would delete it. Its images go
    back to the queue untouched, for a consumer with the index's model, and it takes no more."""
    await adopt_model(store_engine, store, "the-new-model")
    names = pictures(host, 4, seed=40)
    caplog.set_level(logging.ERROR, logger="retrieval.indexing.pipeline")
    jobs = job_queue(store, tiny_encoder.model_id)
    async with running_pipeline(tiny_encoder, store, origins=host.origin, jobs=jobs) as pipe:
        await pipe.submit([ref(host, n, 400 + i) for i, n in enumerate(names)])
        await eventually(lambda: _holds("handed back" in caplog.text), within=JOIN_S)
        await eventually(lambda: _holds(not pipe.queued), within=JOIN_S)
        backlog = await jobs.backlog()
        assert (backlog.waiting, backlog.failed) == (4, {})  # not failed, not retried
        assert pipe.counters.indexed == 0 and not pipe.counters.failed
        fetched = dict(host.hits)
        await asyncio.sleep(0.3)  # polls come and go: it claims nothing more
        assert host.hits == fetched
    assert await store.count(guild_id=1) == 0
    assert len(await jobs.claim(10)) == 4  # not leased: the next consumer takes them at once
    assert "the-new-model" in caplog.text


async def _holds(condition: bool) -> bool:
    return condition
