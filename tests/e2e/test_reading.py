"""The OCR lane of the queue: real pictures with words, the real OCR engine, both databases.
The vectors first and searchable before any reading; then the words, read once, retried after a
CDN failure, deleted with their image, never queued with reading off."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from prometheus_client import generate_latest

from retrieval.database.tables import OCR_LANE
from retrieval.encoding.ocr import OcrEngine
from retrieval.indexing import JobQueue
from retrieval.indexing.reading import ReadingLane
from retrieval.indexing.reading_switch import apply_reading
from retrieval.indexing.signed_urls import SignedUrls
from retrieval.pictures.fetch import Fetcher
from retrieval.pictures.origins import MediaOrigins
from retrieval.runtime.metrics import Metrics
from retrieval.store import SearchScope, open_store
from tests.db.test_operating import scrape
from tests.db.test_pipeline import ImageHost, job_queue, ref, running_pipeline
from tests.e2e.test_e2e_status import line, status
from tests.e2e.test_worker import Worker, image_ref, jobs, url_of, worker_env
from tests.fakediscord import Attachment, FakeDiscord
from tests.helpers import (
    bot_settings,
    eventually,
    find,
    free_port,
    result_ids,
    running_bot,
    settled,
)
from tests.records import image_record
from tests.textimages import caption_sample, missing_fonts

pytestmark = pytest.mark.skipif(
    bool(missing_fonts()),
    reason=f"fonts {missing_fonts()} missing: scripts/setup.sh test installs them with apt",
)

SAYS = {"deploy.png": "Deploy failed on Friday", "cats.png": "Never trust a cat"}
NOWHERE = SimpleNamespace(base="https://cdn.discordapp.com/attachments/1/2")  # never fetched


@pytest.fixture
async def host():
    """Pictures served on loopback, with test_pipeline's faults (`ImageHost`)."""
    async with ImageHost.served() as images:
        yield images


@pytest.fixture(scope="module")
def ocr() -> OcrEngine:
    return OcrEngine()


def serve(host: ImageHost, name: str, words: str, seed: int = 1) -> None:
    sample = caption_sample([words], size=24, background="plain", seed=seed)
    host.files[name] = (sample.data, "image/png")


@contextlib.asynccontextmanager
async def reading_lane(host, store, ocr, clip_jobs):
    async with aiohttp.ClientSession() as http:
        fetcher = Fetcher(
            http,
            allowed=MediaOrigins.parse(host.origin),
            max_bytes=2_000_000,
            timeout_s=5,
            retries=0,
            backoff_s=0.01,
        )
        lane = ReadingLane(
            jobs=clip_jobs.for_lane(OCR_LANE),
            clip_jobs=clip_jobs,
            engine=ocr,
            fetcher=fetcher,
            store=store,
            signed_urls=SignedUrls(None),
            max_pixels=10_000_000,
        )
        await lane.start()
        try:
            yield lane
        finally:
            await lane.close()


async def _read(lane: ReadingLane, n: int) -> bool:
    return lane.counters.indexed == n


async def found(store, model_id: str, *phrases: str) -> set[int]:
    scope = SearchScope(guild_id=1, model_id=model_id)
    return {h.message_id for h in await store.words_matching(scope=scope, all_of=phrases, k=10)}


async def readings(store) -> int:
    return await job_queue(store, "m").for_lane(OCR_LANE).waiting(at_most=1000)


async def test_vectors_come_first_then_the_words_are_read_and_found(
    host, store, tiny_encoder, ocr, caplog
):
    caplog.set_level(logging.DEBUG)
    for name, words in SAYS.items():
        serve(host, name, words)
    jobs = job_queue(store, tiny_encoder.model_id, read_words=True)
    model = tiny_encoder.model_id
    async with running_pipeline(tiny_encoder, store, origins=host.origin, jobs=jobs) as pipe:
        await pipe.submit([ref(host, "deploy.png", 1), ref(host, "cats.png", 2)])
        await pipe.join()
        # Searchable by CLIP before anything was read; the readings wait in their lane.
        assert await store.count(guild_id=1) == 2
        assert await readings(store) == 2
        assert await found(store, model, "deploy") == set()
        async with reading_lane(host, store, ocr, jobs) as lane:
            await lane.join()
        assert lane.counters.indexed == 2 and not lane.counters.failed
    figures = generate_latest(Metrics(pipeline=None, reading=lane).registry).decode()
    assert "clipfind_pictures_read_total 2.0" in figures
    assert await found(store, model, "deploy failed on friday") == {1}
    assert await found(store, model, "trust a cat") == {2}
    assert await readings(store) == 0
    # What people posted stays out of clipfind's logs, at every level (and out of the
    # database driver's: test_the_driver_never_logs_the_words_it_writes).
    ours = [
        r.getMessage().lower() for r in caplog.records if r.name.startswith(("retrieval", "bot"))
    ]
    assert ours and not [m for m in ours if "friday" in m or "trust" in m]


async def test_a_reading_waits_for_its_image_and_for_every_due_vector(store):
    """Claimed only once its own CLIP job is gone, and only while no CLIP job is due."""
    clip = job_queue(store, "m", read_words=True)
    reading = clip.for_lane(OCR_LANE)
    await clip.enqueue([ref(NOWHERE, "a.png", 1)])
    assert await reading.claim(5) == []  # its image has no vector yet
    (job,) = await clip.claim(5)
    await clip.done([job.id])  # stored (or failed for good): the reading may go
    (taken,) = await reading.claim(5)
    assert taken.ref.message_id == 1 and (await reading.backlog()).waiting == 1
    assert (await clip.backlog()).waiting == 0


async def test_the_lane_holds_back_while_a_vector_is_due(host, store, ocr):
    clip = job_queue(store, "m", read_words=True)
    async with reading_lane(host, store, ocr, clip) as lane:
        assert not await lane.vectors_waiting()
        await clip.enqueue([ref(NOWHERE, "a.png", 1)])
        assert await lane.vectors_waiting()
        (job,) = await clip.claim(5)  # in another process's hands: not due any more
        assert not await lane.vectors_waiting()
        await clip.done([job.id])


async def test_a_reading_is_retried_after_a_cdn_failure(host, store, tiny_encoder, ocr):
    serve(host, "deploy.png", SAYS["deploy.png"])
    jobs = job_queue(store, tiny_encoder.model_id, read_words=True)
    async with running_pipeline(tiny_encoder, store, origins=host.origin, jobs=jobs) as pipe:
        await pipe.submit([ref(host, "deploy.png", 1)])
        await pipe.join()
        host.fail_first["deploy.png"] = 1  # the reading's download: a 503 first
        async with reading_lane(host, store, ocr, jobs) as lane:
            await eventually(lambda: _read(lane, 1), within=60)  # retried after its backoff
        assert lane.counters.retried == 1 and lane.counters.indexed == 1
    assert await found(store, tiny_encoder.model_id, "deploy failed") == {1}


async def test_the_same_bytes_are_read_once_per_server(host, store, tiny_encoder, ocr):
    serve(host, "deploy.png", SAYS["deploy.png"])
    jobs = job_queue(store, tiny_encoder.model_id, read_words=True)
    async with running_pipeline(tiny_encoder, store, origins=host.origin, jobs=jobs) as pipe:
        await pipe.submit([ref(host, "deploy.png", 1), ref(host, "deploy.png", 2)])
        await pipe.join()
        async with reading_lane(host, store, ocr, jobs) as lane:
            await lane.join()
        assert (lane.counters.indexed, lane.counters.reused) == (1, 1)
    assert await found(store, tiny_encoder.model_id, "failed on friday") == {1, 2}


async def test_deletions_and_opt_outs_remove_queued_readings(store):
    clip = job_queue(store, "m", read_words=True)
    await clip.enqueue([ref(NOWHERE, "a.png", i, author_id=70 + i % 2) for i in range(1, 7)])
    assert await readings(store) == 6
    await store.delete_messages([1], guild_id=1)
    assert await readings(store) == 5
    await store.delete_author(guild_id=None, author_id=71)  # messages 3 and 5
    assert await readings(store) == 3
    await store.delete_guild(1)
    assert await readings(store) == 0


async def test_with_reading_off_nothing_is_queued_and_the_words_go_at_the_next_start(
    host, store, tiny_encoder, ocr
):
    serve(host, "deploy.png", SAYS["deploy.png"])
    model = tiny_encoder.model_id
    # Stored while reading was off: nothing queued to read.
    off = job_queue(store, model, read_words=False)
    async with running_pipeline(tiny_encoder, store, origins=host.origin, jobs=off) as pipe:
        await pipe.submit([ref(host, "deploy.png", 1)])
        await pipe.join()
    assert await readings(store) == 0
    # Turned on: what was stored before is queued, once, at the lowest priority.
    await apply_reading(on=True, engine=store.engine, store=store)
    await apply_reading(on=True, engine=store.engine, store=store)
    assert await readings(store) == 1
    on = job_queue(store, model, read_words=True)
    async with reading_lane(host, store, ocr, on) as lane:
        await lane.join()
    assert await found(store, model, "deploy") == {1}
    # Off again: the words are deleted at the next start, and the readings queued with them.
    await on.enqueue([ref(host, "deploy.png", 2)])
    assert await readings(store) == 1
    await apply_reading(on=False, engine=store.engine, store=store)
    assert await found(store, model, "deploy") == set()
    assert await store.count_words(author_id=5) == 0
    assert await readings(store) == 0


async def test_a_reading_held_by_a_killed_worker_is_done_by_the_next(
    postgres_engine, tiny_encoder, tmp_path
):
    """A worker that takes only the OCR lane dies holding a reading (its download hangs): the
    reading outlives it, leased, and the next worker reads it once the lease runs out."""
    store = open_store(postgres_engine)
    said = caption_sample([SAYS["deploy.png"]], size=24, seed=1)
    ocr_only = {"JOB_LEASE_S": "3", "OCR": "on", "WORKER_LANES": "ocr"}
    try:
        async with FakeDiscord() as fd:
            link = fd.host_external_image("deploy.png", said.data, "image/png")
            ref = image_ref(1, link)
            vector = tiny_encoder.encode_texts(["anything"])[0]
            stored = image_record(
                0,
                vector,
                message_id=ref.message_id,
                image_key=ref.image_key,
                guild_id=ref.guild_id,
                channel_id=ref.channel_id,
                author_id=ref.author_id,
                model_id=tiny_encoder.model_id,
            )
            await store.upsert([stored])
            queue = JobQueue(postgres_engine, model_id=tiny_encoder.model_id, read_words=True)
            await queue.enqueue([ref])  # its vector is stored: only its reading is queued
            assert await jobs(postgres_engine) == 1
            fd.set_cdn_fault(link, stall=True)
            env = worker_env(url_of(postgres_engine), fd.cdn_origin, **ocr_only)
            first = await Worker.start(tmp_path, env)
            try:
                await eventually(lambda: _leased(postgres_engine), within=90)
                assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
            finally:
                await first.ensure_gone()
            assert await jobs(postgres_engine, leased=True) == 1
            fd.cdn.faults.clear()
            second = await Worker.start(tmp_path, env)
            try:
                await eventually(lambda: _no_jobs(postgres_engine), within=90)
                assert await second.stop() == 0
            finally:
                await second.ensure_gone()
        assert await found(store, tiny_encoder.model_id, "failed on friday") == {ref.message_id}
    finally:
        await store.close()


async def test_an_ocr_only_worker_reads_beside_a_bot_that_encodes_and_loads_no_clip_model(
    postgres_engine, tmp_path
):
    """A CPU box for the words beside a box for the vectors: the bot takes only the CLIP lane,
    the worker only the OCR lane, without torch or the CLIP model's weights."""
    url = url_of(postgres_engine)
    said = caption_sample([SAYS["deploy.png"]], size=24, seed=1)
    port = free_port()
    async with FakeDiscord() as fd:
        settings = bot_settings(fd, tmp_path, database_url=url, ocr=True, worker_lanes="clip")
        guild = fd.add_guild("Readers")
        general = guild.add_text_channel("general")
        alice = guild.add_member("alice")
        ocr_only = {
            "OCR": "on",
            "WORKER_LANES": "ocr",
            "METRICS_PORT": str(port),
            "METRICS_ADDR": "127.0.0.1",
            # Nothing to load: a worker that does not encode never opens the model's files.
            "CLIP_MODEL": "no-such-model",
            "CLIP_PRETRAINED": str(tmp_path / "absent.pt"),
        }
        worker = await Worker.start(tmp_path, worker_env(url, fd.cdn_origin, **ocr_only))
        try:
            async with running_bot(settings, fd) as bot:
                await fd.wait_ready()
                posted = await fd.post_message(
                    general,
                    alice,
                    "",
                    attachments=[Attachment("deploy.png", said.data, "image/png")],
                )
                await settled(bot, fd)
                assert bot.services.reading is None, "the bot leaves the words to the worker"
                scope = SearchScope(guild_id=guild.id, model_id=bot.encoder.model_id)

                async def read() -> bool:
                    if worker.process.returncode is not None:
                        raise AssertionError(f"the worker exited:\n{worker.log()}")
                    hits = await bot.store.words_matching(scope=scope, all_of=["friday"], k=5)
                    return [h.message_id for h in hits] == [posted.id]

                await eventually(read, within=120)
                reply = await find(fd, guild, general, alice, '"failed on friday"')
                assert result_ids(reply) == [posted.id]
                figures = await scrape(port)
                assert "clipfind_pictures_read_total 1.0" in figures
                assert "clipfind_images_stored" not in figures, "no CLIP lane in this worker"
                # Its heartbeat makes it the cluster's one reader, the bot its one encoder.
                assert 'clipfind_cluster_readers{role="worker"} 1.0' in figures
                owner = guild.add_existing_user(fd.owner_user)
                said = await status(fd, guild, general, owner)
                assert "from 1 process (bot on " in line(said, "Encoding, whole cluster")
                assert "from 1 process (worker on " in line(said, "Reading, whole cluster")
                assert "Words read by this process" not in said
            # What the worker's process has mapped: the OCR runtime, and no torch.
            maps = Path(f"/proc/{worker.process.pid}/maps")
            libraries = await asyncio.to_thread(maps.read_text)
            assert "onnxruntime" in libraries
            assert "libtorch" not in libraries
            assert await worker.stop() == 0
        finally:
            await worker.ensure_gone()
    log = worker.log()
    assert "loading the CLIP model" not in log and "Traceback" not in log
    assert "encoder worker started, lanes ocr: reading with rapidocr" in log, log
    assert "; no CLIP model loaded; database " in log


def test_a_worker_that_would_take_no_lane_is_refused(tmp_path):
    """WORKER_LANES=ocr with OCR=off leaves the worker nothing to do: it says so and stops."""
    import subprocess
    import sys

    env = worker_env("postgresql+asyncpg://postgres@/none?host=/nowhere", "http://x")
    env |= {"OCR": "off", "WORKER_LANES": "ocr"}
    done = subprocess.run(
        [sys.executable, "-m", "bot", "worker"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "WORKER_LANES=ocr takes only the OCR lane, and OCR=off" in done.stderr
    assert "Traceback" not in done.stderr


async def _leased(engine) -> bool:
    return await jobs(engine, leased=True) == 1


async def _no_jobs(engine) -> bool:
    return await jobs(engine) == 0


def test_the_lanes_a_process_takes_are_set_and_checked():
    from retrieval.config import load_settings
    from retrieval.errors import ConfigError

    assert load_settings(_env_file=None).lanes() == {"clip", "ocr"}
    assert load_settings(_env_file=None, worker_lanes=" OCR ").lanes() == {"ocr"}
    # Reading off: no process takes the OCR lane, whatever it was told; one told to take only
    # that lane would idle, and is refused.
    assert load_settings(_env_file=None, ocr="off").lanes() == {"clip"}
    with pytest.raises(ConfigError, match="WORKER_LANES=ocr takes only the OCR lane, and OCR="):
        load_settings(_env_file=None, ocr="off", worker_lanes="ocr")
    # One process on SQLite takes the vectors itself: nothing else could.
    alone = load_settings(_env_file=None, worker_lanes="ocr")
    assert "WORKER_LANES=ocr leaves encoding to other processes" in alone.encoding_problem()
    postgres = "postgresql+asyncpg://postgres@/db?host=/run"
    assert (
        load_settings(_env_file=None, worker_lanes="ocr", database_url=postgres).encoding_problem()
        is None
    )
    with pytest.raises(ConfigError, match="WORKER_LANES: .*gpu; the lanes are clip, ocr"):
        load_settings(_env_file=None, worker_lanes="clip,gpu")


def test_the_driver_never_logs_the_words_it_writes(tmp_path, monkeypatch, isolated_logging):
    """aiosqlite logs each statement with its values at DEBUG: the bot keeps it at INFO, so the
    words read from pictures stay out of the logs even with LOG_LEVEL=DEBUG."""
    from bot.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/cli.db")
    assert main(["db", "upgrade"]) == 0
    assert logging.getLogger("clipfind").getEffectiveLevel() == logging.DEBUG
    assert logging.getLogger("aiosqlite").getEffectiveLevel() == logging.INFO


async def test_applying_the_reading_setting_waits_out_an_outage(store, store_engine, monkeypatch):
    """A worker restarted while PostgreSQL restarted: its start-up task waits the outage out
    instead of failing (three failures made the process report itself unhealthy)."""
    from retrieval.errors import StoreUnavailable
    from retrieval.indexing import reading_switch

    monkeypatch.setattr("retrieval.backoff.FIRST_S", 0.01)
    real, failures = reading_switch.get_state, []

    async def away_at_first(engine, key):
        if len(failures) < 2:
            failures.append(key)
            raise StoreUnavailable("database error: [Errno 2] No such file or directory")
        return await real(engine, key)

    monkeypatch.setattr(reading_switch, "get_state", away_at_first)
    switch = reading_switch.apply_reading(on=False, engine=store_engine, store=store)
    await asyncio.wait_for(switch, 30)
    assert len(failures) == 2
    assert await real(store_engine, reading_switch.READING_KEY) == "off"
