"""The indexing pipeline end to end without Discord: HTTP on loopback → tiny CLIP → SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from datetime import UTC, datetime

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from retrieval.encoding.service import EncoderService
from retrieval.indexing import ImageRef, IndexingPipeline, JobQueue, RetryPolicy
from retrieval.pictures.fetch import Fetcher
from retrieval.pictures.origins import MediaOrigins
from retrieval.policy.index_policy import IndexPolicy
from retrieval.store import SearchScope
from tests.helpers import eventually, loopback_server
from tests.tinyclip.shapes import caption, draw, jpeg_bytes, png_bytes


class ImageHost:
    """Serves bytes per path, with the faults a real CDN shows now and then."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        self.fail_first: dict[str, int] = {}
        self.fail_status: dict[str, tuple[int, dict[str, str]]] = {}  # status, headers
        self.hits: dict[str, int] = {}
        self.hold = asyncio.Event()  # held paths wait for it
        self.held: set[str] = set()
        self.origin = self.base = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits[name] = self.hits.get(name, 0) + 1
        if name in self.held:
            await self.hold.wait()
        if self.fail_first.get(name, 0) > 0:
            self.fail_first[name] -= 1
            status, headers = self.fail_status.get(name, (503, {}))
            return web.Response(status=status, headers=headers)
        if name not in self.files:
            return web.Response(status=404)
        body, content_type = self.files[name]
        return web.Response(body=body, content_type=content_type)

    @classmethod
    @contextlib.asynccontextmanager
    async def served(cls):
        """A host serving on loopback until the block ends."""
        images = cls()
        async with loopback_server(images.handle, route="/img/{name}") as port:
            images.origin = f"http://127.0.0.1:{port}"
            images.base = f"{images.origin}/img"
            yield images


@pytest.fixture
async def host():
    async with ImageHost.served() as images:
        yield images


def job_queue(store, model_id: str, **options) -> JobQueue:
    return JobQueue(store.engine, model_id=model_id, retry=RetryPolicy(0.05, 0.2, 30.0), **options)


@contextlib.asynccontextmanager
async def running_pipeline(
    encoder, store, *, origins: str, jobs: JobQueue | None = None, window: int = 4, **options
):
    service = EncoderService(encoder)
    async with aiohttp.ClientSession() as http:
        fetcher = Fetcher(
            http,
            allowed=MediaOrigins.parse(origins),
            max_bytes=200_000,
            timeout_s=5,
            retries=2,
            backoff_s=0.01,
        )
        pipe = IndexingPipeline(
            fetcher=fetcher,
            encoder=service,
            store=store,
            jobs=jobs or job_queue(store, encoder.model_id),
            spec=encoder.spec,
            max_pixels=10_000_000,
            batch_size=4,
            batch_deadline_s=0.02,
            queue_size=window,
            **{"fetch_workers": 3, **options},
        )
        await pipe.start()
        try:
            yield pipe
        finally:
            await pipe.close()
            await service.close()


@pytest.fixture
async def pipeline(host, tiny_encoder, store):
    async with running_pipeline(tiny_encoder, store, origins=host.origin) as pipe:
        yield pipe


def ref(host: ImageHost, name: str, message_id: int, **overrides) -> ImageRef:
    values = dict(
        guild_id=1,
        channel_id=10,
        message_id=message_id,
        image_key=message_id * 10,
        kind="attachment",
        author_id=5,
        posted_at=datetime(2026, 5, 1, tzinfo=UTC),
        url=f"{host.base}/{name}?ex=1&hm=sig",
        source_url=f"{host.base}/{name}",
        filename=name,
        content_type="image/png",
    )
    values.update(overrides)
    return ImageRef(**values)


async def test_images_are_indexed_and_found_by_text(host, pipeline, store, tiny_encoder):
    names = {}
    for i, (colour, shape) in enumerate([("red", "circle"), ("blue", "square"), ("green", "star")]):
        picture = draw(colour, shape, size=160, rng=i)
        host.files[f"{shape}.png"] = (png_bytes(picture), "image/png")
        names[caption(colour, shape)] = 100 + i
    host.files["photo.jpg"] = (
        jpeg_bytes(draw("yellow", "triangle", size=200, rng=9)),
        "image/jpeg",
    )
    await pipeline.submit(
        [ref(host, f"{shape}.png", 100 + i) for i, shape in enumerate(["circle", "square", "star"])]
        + [ref(host, "photo.jpg", 200, content_type="image/jpeg")]
    )
    await pipeline.join()
    assert pipeline.counters.indexed == 4 and not pipeline.counters.failed
    for text, message_id in names.items():
        query = tiny_encoder.encode_texts([text])[0]
        hits = await store.search(
            query, scope=SearchScope(guild_id=1, model_id=tiny_encoder.model_id), k=1
        )
        assert hits[0].message_id == message_id, text
        assert hits[0].source_url.endswith(".png") and "?" not in hits[0].source_url


async def test_bad_input_is_skipped_with_a_reason(host, pipeline, store, caplog):
    host.files["ok.png"] = (png_bytes(draw("red", "cross", rng=1)), "image/png")
    host.files["corrupt.png"] = (b"\x89PNG\r\n\x1a\n" + b"\0" * 200, "image/png")
    host.files["page.png"] = (b"<html>not an image</html>", "text/html")
    host.files["huge.png"] = (b"\x89PNG\r\n\x1a\n" + b"\0" * 300_000, "image/png")
    host.files["elsewhere.png"] = (png_bytes(draw("blue", "cross", rng=2)), "image/png")
    # The same server under another name: not an allowed origin, so never asked.
    elsewhere = host.base.replace("127.0.0.1", "localhost") + "/elsewhere.png?ex=1&hm=sig"
    caplog.set_level(logging.WARNING, logger="retrieval.indexing.pipeline")
    await pipeline.submit(
        [
            ref(host, "ok.png", 1),
            ref(host, "corrupt.png", 2),
            ref(host, "page.png", 3),
            ref(host, "huge.png", 4),
            ref(host, "missing.png", 5),
            ref(host, "declared-huge.png", 6, size=10_000_000),
            ref(host, "elsewhere.png", 7, url=elsewhere),
        ]
    )
    await pipeline.join()
    failed = pipeline.counters.failed
    assert pipeline.counters.indexed == 1
    assert failed == {
        "corrupt": 1,
        "not_an_image": 1,
        "too_large": 2,
        "http_404": 1,
        "off_discord": 1,
    }
    assert "declared-huge.png" not in host.hits  # refused before any download
    assert "elsewhere.png" not in host.hits
    assert "elsewhere.png of message 7" in caplog.text and "off_discord" in caplog.text
    assert "missing.png of message 5" in caplog.text and "http_404" in caplog.text
    assert "sig" not in caplog.text  # signed query strings stay out of logs
    assert await store.count(guild_id=1) == 1


async def test_each_server_has_its_own_backlog_and_failures(host, pipeline):
    host.files["ok.png"] = (png_bytes(draw("red", "cross", rng=1)), "image/png")
    host.files["page.png"] = (b"<html>not an image</html>", "text/html")
    host.held.add("slow.png")
    await pipeline.submit(
        [
            ref(host, "ok.png", 1),
            ref(host, "page.png", 2, guild_id=2),
            ref(host, "missing.png", 3, guild_id=2),
            ref(host, "slow.png", 4, guild_id=3),
        ]
    )
    jobs = pipeline.jobs
    for _ in range(200):  # until only the held download is left
        if (await jobs.backlog()).waiting == 1 and pipeline.counters.indexed == 1:
            break
        await asyncio.sleep(0.02)
    assert (await jobs.backlog(3)).waiting == 1 and (await jobs.backlog(1)).waiting == 0
    assert (await jobs.backlog(2)).failed == {"not_an_image": 1, "http_404": 1}
    assert (await jobs.backlog(3)).failed == {}
    host.files["slow.png"] = host.files["ok.png"]
    host.hold.set()
    await pipeline.join()
    assert (await jobs.backlog(3)).waiting == 0


async def test_transient_server_errors_are_retried(host, pipeline, store):
    host.files["flaky.png"] = (png_bytes(draw("blue", "circle", rng=3)), "image/png")
    host.fail_first["flaky.png"] = 2
    await pipeline.submit([ref(host, "flaky.png", 7)])
    await pipeline.join()
    assert host.hits["flaky.png"] == 3
    assert await store.count(guild_id=1) == 1


async def test_an_outage_longer_than_the_quick_retries_waits_in_the_table(host, pipeline, store):
    host.files["down.png"] = (png_bytes(draw("green", "circle", rng=4)), "image/png")
    host.fail_first["down.png"] = 7  # three quick tries per attempt: the third attempt gets in
    host.files["busy.png"] = (png_bytes(draw("red", "star", rng=5)), "image/png")
    host.fail_first["busy.png"] = 1
    host.fail_status["busy.png"] = (429, {"Retry-After": "0.6"})
    started = asyncio.get_running_loop().time()
    await pipeline.submit([ref(host, "down.png", 8), ref(host, "busy.png", 9)])
    for _ in range(100):
        if await store.count(guild_id=1) == 2:
            break
        await asyncio.sleep(0.05)
    assert await store.count(guild_id=1) == 2
    assert not pipeline.counters.failed and pipeline.counters.retried >= 3
    assert host.hits["down.png"] == 8  # three attempts of up to three tries, spread out
    assert host.hits["busy.png"] == 2  # Retry-After is not second-guessed by quick retries
    assert asyncio.get_running_loop().time() - started >= 0.6
    assert (await pipeline.jobs.backlog()).retrying == 0


async def test_redelivery_and_reposts_do_no_extra_work(host, pipeline, store):
    host.files["a.png"] = (png_bytes(draw("orange", "square", rng=4)), "image/png")
    await pipeline.submit([ref(host, "a.png", 8)])
    await pipeline.join()
    encoded = pipeline.encoder.counters.images
    await pipeline.submit([ref(host, "a.png", 8)])  # the same message delivered again
    await pipeline.submit([ref(host, "a.png", 9)])  # the same bytes reposted
    await pipeline.join()
    assert pipeline.counters.reused == 1  # the redelivery was not even queued
    assert pipeline.encoder.counters.images == encoded
    assert host.hits["a.png"] == 2
    assert await store.count(guild_id=1) == 2


async def test_a_backlog_waits_in_the_table_and_memory_holds_a_window(host, pipeline, store):
    for i in range(40):
        host.files[f"s{i}.png"] = (
            png_bytes(draw("purple", "star", size=96, rng=100 + i)),
            "image/png",
        )
    held, waiting = 0, 0

    async def watch():
        nonlocal held, waiting
        while True:
            held = max(held, pipeline.queued)
            waiting = max(waiting, await pipeline.jobs.waiting(at_most=100))
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    await pipeline.submit([ref(host, f"s{i}.png", 1000 + i) for i in range(40)])
    await pipeline.join()
    watcher.cancel()
    assert pipeline.counters.indexed == 40
    # The whole backlog was rows in the table at once; the process held only its window.
    assert waiting >= 30 and 0 < held <= pipeline.window == 4
    assert await store.count(guild_id=1) == 40
    vectors = await store.embedding_for(
        (await _hash_of(host.files["s0.png"][0])), pipeline.model_id
    )
    assert vectors is not None and np.isclose(np.linalg.norm(vectors), 1.0, atol=1e-5)


async def test_a_backlog_within_the_window_is_claimed_at_once(host, store, tiny_encoder):
    """Each claim is a transaction on the event loop: rows that fit the window are taken in one
    claim, and neither finished images nor a caller waiting in join() send the feeder back to a
    table it found empty (only its poll does, for retries coming due)."""
    import retrieval.indexing.pipeline

    for i in range(24):
        host.files[f"c{i}.png"] = (png_bytes(draw("blue", "circle", rng=700 + i)), "image/png")
    jobs = job_queue(store, tiny_encoder.model_id)
    claimed: list[int] = []
    claim = jobs.claim

    async def counted(limit: int):
        taken = await claim(limit)
        claimed.append(len(taken))
        return taken

    jobs.claim = counted
    async with running_pipeline(
        tiny_encoder, store, origins=host.origin, jobs=jobs, window=64
    ) as pipe:
        started = time.monotonic()
        await pipe.submit([ref(host, f"c{i}.png", 700 + i) for i in range(24)])
        await pipe.join()
        elapsed = time.monotonic() - started
    assert pipe.counters.indexed == 24
    assert 24 in claimed
    # At start (nothing yet), the submission, and one per poll.
    polls = int(elapsed / retrieval.indexing.window._FEED_POLL_S) + 1
    assert len(claimed) <= 2 + polls, (claimed, elapsed)


async def test_reuse_lookups_asked_together_share_one_query(store):
    """Each fetched image asks whether its bytes were encoded before; the workers asking at the
    same moment share one query, and each gets its own answer (or the error)."""
    from retrieval.errors import StoreUnavailable
    from retrieval.indexing.reuse import ReuseLookups
    from tests.records import MODEL, image_record

    vector = np.zeros(16, dtype=np.float32)
    vector[3] = 1.0
    await store.upsert([image_record(1, vector)])  # its bytes hash to "hash1"
    queries: list[list[str]] = []
    failing = False

    class Counting:
        async def embeddings_for(self, hashes, model_id):
            queries.append(sorted(hashes))
            if failing:
                raise StoreUnavailable("database is locked")
            return await store.embeddings_for(hashes, model_id)

    lookups = ReuseLookups(Counting(), MODEL)
    asked = ["hash1", "new1", "new2", "hash1"]
    found = await asyncio.gather(*(lookups.embedding_for(h) for h in asked))
    assert queries == [["hash1", "new1", "new2"]]
    assert np.allclose(found[0], vector) and np.allclose(found[3], vector)
    assert found[1] is None and found[2] is None
    failing = True
    answers = await asyncio.gather(
        lookups.embedding_for("hash1"), lookups.embedding_for("new3"), return_exceptions=True
    )
    assert len(queries) == 2
    assert all(isinstance(answer, StoreUnavailable) for answer in answers)


async def _hash_of(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


class _FlakyStore:
    """The real store behind a database that is down for its first few writes."""

    def __init__(self, inner, outages: int) -> None:
        self.inner = inner
        self.outages = outages

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def upsert(self, records, *, job_ids=None):
        from retrieval.errors import StoreUnavailable

        if self.outages > 0:
            self.outages -= 1
            raise StoreUnavailable("database is locked")
        return await self.inner.upsert(records, job_ids=job_ids)


async def test_a_database_outage_loses_nothing(host, store, tiny_encoder, caplog, monkeypatch):
    monkeypatch.setattr("retrieval.backoff.FIRST_S", 0.01)
    flaky = _FlakyStore(store, outages=3)
    for i in range(5):
        host.files[f"o{i}.png"] = (png_bytes(draw("red", "square", rng=200 + i)), "image/png")
    caplog.set_level(logging.ERROR, logger="retrieval.indexing.pipeline")
    async with running_pipeline(
        tiny_encoder, flaky, origins=host.origin, jobs=job_queue(store, tiny_encoder.model_id)
    ) as pipeline:
        await pipeline.submit([ref(host, f"o{i}.png", 300 + i) for i in range(5)])
        await pipeline.join()
    assert flaky.outages == 0
    assert "database unavailable" in caplog.text and "database is locked" in caplog.text
    assert await store.count(guild_id=1) == 5
    assert not pipeline.counters.failed


async def test_images_in_flight_are_not_written_once_deleted_or_refused(host, pipeline, store):
    for i in range(4):
        host.files[f"f{i}.png"] = (png_bytes(draw("blue", "star", rng=400 + i)), "image/png")
        host.held.add(f"f{i}.png")
    await pipeline.submit(
        [
            ref(host, "f0.png", 500),
            ref(host, "f1.png", 501),
            ref(host, "f2.png", 502, author_id=6),
            ref(host, "f3.png", 503),
        ]
    )
    await asyncio.sleep(0.2)  # all four are downloading
    await store.delete_messages([501])  # deleted on Discord meanwhile: its job goes too
    await IndexPolicy(store.engine).opt_out(6)  # opted out (another process): nothing deleted
    host.hold.set()
    await pipeline.join()
    assert {h for h in host.hits} == {"f0.png", "f1.png", "f2.png", "f3.png"}
    assert pipeline.counters.discarded == 2
    assert await store.known_keys(500) and await store.known_keys(503)
    assert not await store.known_keys(501) and not await store.known_keys(502)
    assert await pipeline.jobs.waiting(at_most=10) == 0


async def test_closing_hands_unfinished_jobs_back_at_once(host, store, tiny_encoder):
    for i in range(3):
        host.files[f"c{i}.png"] = (png_bytes(draw("red", "circle", rng=700 + i)), "image/png")
        host.held.add(f"c{i}.png")
    jobs = job_queue(store, tiny_encoder.model_id, lease_s=600)
    async with running_pipeline(tiny_encoder, store, origins=host.origin, jobs=jobs) as pipe:
        await pipe.submit([ref(host, f"c{i}.png", 700 + i) for i in range(3)])
        await asyncio.sleep(0.2)  # downloading: claimed for ten minutes
    host.hold.set()
    assert len(await jobs.claim(10)) == 3  # not ten minutes later: now


async def test_an_encoder_failure_retries_the_batch(host, store, tiny_encoder):
    class Failing:
        def __init__(self, inner) -> None:
            self.inner, self.failures = inner, 1
            self.model_id, self.dim, self.spec = inner.model_id, inner.dim, inner.spec

        def encode_images(self, batch):
            if self.failures:
                self.failures -= 1
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return self.inner.encode_images(batch)

        def encode_texts(self, texts):
            return self.inner.encode_texts(texts)

    for i in range(2):
        host.files[f"e{i}.png"] = (png_bytes(draw("yellow", "cross", rng=800 + i)), "image/png")
    async with running_pipeline(Failing(tiny_encoder), store, origins=host.origin) as pipe:
        await pipe.submit([ref(host, f"e{i}.png", 800 + i) for i in range(2)])
        for _ in range(100):
            if await store.count(guild_id=1) == 2:
                break
            await asyncio.sleep(0.05)
        assert await store.count(guild_id=1) == 2 and not pipe.counters.failed


async def test_batches_fill_up_while_the_encoder_is_busy(host, store, tiny_encoder):
    """A lone image goes after the deadline; images arriving behind a busy encoder wait to form
    a full batch (small batches cost far more per image) instead of leaving at the deadline."""
    from tests.unit.test_encoder import _Gated

    gated = _Gated(tiny_encoder)
    for i in range(5):
        host.files[f"b{i}.png"] = (png_bytes(draw("red", "square", rng=600 + i)), "image/png")

    async def fetched(*names: str) -> None:
        # Claiming a job takes a database round trip or more (a new connection to Citus asks
        # the catalog for types: 0.75 s), so wait for the download rather than a fixed time.
        async def done() -> bool:
            return all(host.hits.get(name) for name in names)

        await eventually(done, within=10)
        await asyncio.sleep(0.2)  # decoded (in a thread, on a machine that may be busy)

    async with running_pipeline(gated, store, origins=host.origin, window=8) as pipe:
        await pipe.submit([ref(host, "b0.png", 600)])
        await fetched("b0.png")  # b0 alone, held at the encoder
        await pipe.submit([ref(host, f"b{i}.png", 600 + i) for i in (1, 2, 3)])
        await fetched("b1.png", "b2.png", "b3.png")
        await asyncio.sleep(0.3)  # 15 deadlines of 20 ms pass with 3 images waiting
        await pipe.submit([ref(host, "b4.png", 604)])
        await fetched("b4.png")
        gated.gate.set()
        await pipe.join()
        assert gated.sizes == [1, 4]
        assert pipe.counters.indexed == 5 and await store.count(guild_id=1) == 5


async def test_a_free_stream_takes_a_partial_batch_while_another_is_busy(host, store, tiny_encoder):
    """With two streams a batch held in the model leaves the other stream free: images arriving
    meanwhile go to it after the deadline, not behind the held batch."""
    from tests.unit.test_encoder import _Gated

    gated = _Gated(tiny_encoder, streams=2)
    for i in range(3):
        host.files[f"s{i}.png"] = (png_bytes(draw("blue", "circle", rng=900 + i)), "image/png")

    async def stored(count: int) -> bool:
        return await store.count(guild_id=1) == count

    async def holding() -> bool:
        return gated.holding()

    async with running_pipeline(gated, store, origins=host.origin, window=8) as pipe:
        await pipe.submit([ref(host, "s0.png", 900)])
        await eventually(holding, within=10)
        await pipe.submit([ref(host, f"s{i}.png", 900 + i) for i in (1, 2)])
        await eventually(lambda: stored(2), within=10)  # s0 still held in the other stream
        assert gated.sizes == [2]
        gated.gate.set()
        await pipe.join()
        assert await stored(3) and gated.sizes == [2, 1]


async def test_decoding_threads_resize_on_one_torch_thread_and_streams_keep_their_share(
    host, store, tiny_encoder, monkeypatch
):
    """torch hands a new thread the count whichever thread set one last: a decoding thread
    sets its own one thread, and a stream's share holds whatever the decoding threads set."""
    import torch

    from retrieval.indexing import fetching

    counts: dict[str, set[int]] = {"decode": set(), "encode": set()}

    def counted(where, work):
        def run(*args, **kwargs):
            counts[where].add(torch.get_num_threads())
            return work(*args, **kwargs)

        return run

    monkeypatch.setattr(fetching, "prepare", counted("decode", fetching.prepare))
    encode = counted("encode", tiny_encoder.encode_images)
    monkeypatch.setattr(tiny_encoder, "encode_images", encode)
    monkeypatch.setattr(tiny_encoder, "threads_per_stream", 2)
    before = torch.get_num_threads()
    # torch's default on a machine of three cores, as the threads started now would take it.
    setting = threading.Thread(target=lambda: (torch.get_num_threads(), torch.set_num_threads(3)))
    setting.start()
    setting.join()
    try:
        for i in range(3):
            host.files[f"t{i}.png"] = (png_bytes(draw("red", "cross", rng=950 + i)), "image/png")
        async with running_pipeline(tiny_encoder, store, origins=host.origin) as pipe:
            await pipe.submit([ref(host, f"t{i}.png", 950 + i) for i in range(3)])
            await pipe.join()
            assert pipe.counters.indexed == 3
    finally:
        torch.set_num_threads(before)
    assert counts == {"decode": {1}, "encode": {2}}


class Refresher:
    """Discord's refresh-urls as the pipeline sees it: every URL re-signed as ``renamed``'s
    target, or echoed unchanged (gone) when it has none."""

    def __init__(self, host: ImageHost, renamed: dict[str, str]) -> None:
        self.host, self.renamed = host, renamed
        self.calls: list[list[str]] = []

    async def __call__(self, urls):
        self.calls.append(list(urls))
        out = {}
        for url in urls:
            name = url.split("?")[0].rsplit("/", 1)[-1]
            target = self.renamed.get(name)
            out[url] = signed(self.host, target, time.time() + 86400) if target else url
        return out


def signed(host: ImageHost, name: str, expiry: float) -> str:
    return f"{host.base}/{name}?ex={int(expiry):x}&is={int(expiry) - 86400:x}&hm=sig&"


async def test_an_expired_attachment_url_is_refreshed_before_the_download(host, pipeline, store):
    host.files["fresh.png"] = (png_bytes(draw("red", "circle", rng=1)), "image/png")
    refresher = pipeline.signed_urls.refresh = Refresher(host, {"stale.png": "fresh.png"})
    expired = signed(host, "stale.png", time.time() - 60)
    await pipeline.submit([ref(host, "stale.png", 60, url=expired)])
    await pipeline.join()
    assert await store.known_keys(60) == {600}
    assert refresher.calls == [[expired]]
    assert "stale.png" not in host.hits  # the expired URL was never tried


async def test_a_404_on_a_signed_url_is_refreshed_and_only_a_gone_one_is_permanent(
    host, pipeline, store
):
    host.files["resigned.png"] = (png_bytes(draw("blue", "star", rng=2)), "image/png")
    refresher = pipeline.signed_urls.refresh = Refresher(host, {"rotated.png": "resigned.png"})
    # Not expired by its `ex`, yet the CDN refuses it (re-signed since, or deleted).
    rotated = signed(host, "rotated.png", time.time() + 3600)
    deleted = signed(host, "deleted.png", time.time() + 3600)
    preview = f"{host.base}/preview.png"  # a link preview: not a signed attachment
    await pipeline.submit(
        [
            ref(host, "rotated.png", 61, url=rotated),
            ref(host, "deleted.png", 62, url=deleted),
            ref(host, "preview.png", 63, url=preview, kind="embed"),
        ]
    )
    await pipeline.join()
    assert await store.known_keys(61) == {610}
    assert not await store.known_keys(62) and not await store.known_keys(63)
    assert pipeline.counters.failed == {"http_404": 2}
    assert sorted(url for call in refresher.calls for url in call) == sorted([rotated, deleted])
    # The deleted one's link is tried, unless the rotated one's refresh came first: its link,
    # issued with the rotated one, was then taken for dead and refreshed (to no avail) first.
    assert host.hits.pop("deleted.png", 0) <= 1
    assert host.hits == {"rotated.png": 1, "resigned.png": 1, "preview.png": 1}
    assert (await pipeline.jobs.backlog()).waiting == 0


async def test_a_failed_refresh_is_retried_later(host, pipeline, store):
    host.files["later.png"] = (png_bytes(draw("green", "cross", rng=3)), "image/png")
    answers = Refresher(host, {"moved.png": "later.png"})
    failures = 2

    async def flaky(urls):
        nonlocal failures
        if failures:
            failures -= 1
            raise ConnectionResetError("Discord's API is having a moment")
        return await answers(urls)

    pipeline.signed_urls.refresh = flaky
    await pipeline.submit([ref(host, "moved.png", 64, url=signed(host, "moved.png", time.time()))])
    for _ in range(100):
        if await store.known_keys(64):
            break
        await asyncio.sleep(0.05)
    assert await store.known_keys(64) == {640}
    assert not pipeline.counters.failed and pipeline.counters.retried >= 1
