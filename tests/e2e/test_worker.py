"""`python -m bot worker` as a real process on a real PostgreSQL: it drains the jobs table, a
worker killed mid-work loses nothing, a stopped one hands its claims back, a database that is
away is waited for, and a bot that does not encode (ENCODE_IMAGES=false) relies on it."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import signal
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from sqlalchemy import func, select

from bot.link_refresh import NO_TOKEN_FOR_WORKER
from bot.startup import TOKEN_REFUSED
from retrieval.database.engine import create_engine, ensure_schema
from retrieval.database.state import set_state
from retrieval.database.tables import IndexedImage, IndexJob
from retrieval.indexing import ImageRef, JobQueue
from retrieval.indexing.model_switch import INDEX_MODEL_KEY
from tests.conftest import postgres_url
from tests.e2e.test_e2e_status import line, status
from tests.fakediscord import FakeDiscord
from tests.fakediscord.cdn import LINK_TTL
from tests.helpers import bot_settings, eventually, find, picture, result_ids, running_bot, settled
from tests.tinyclip import CHECKPOINT_PATH, CONFIG_PATH

ROOT = Path(__file__).resolve().parents[2]


def worker_env(database_url: str, media_origin: str, **settings: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DATABASE_", "CLIP_", "JOB_", "DISCORD_"))
    }
    return {
        **env,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "DATABASE_URL": database_url,
        "DISCORD_MEDIA_ORIGINS": media_origin,
        "CLIP_MODEL": str(CONFIG_PATH),
        "CLIP_PRETRAINED": str(CHECKPOINT_PATH),
        "CLIP_DEVICE": "cpu",
        "BATCH_DEADLINE_MS": "10",
        "OCR": "off",  # see tests/e2e.py's bot_settings
        "FETCH_TIMEOUT_S": "120",  # a stalled download must outlast the test's kill
        **settings,
    }


class Worker:
    """One `python -m bot worker` process, its log kept in a file."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log_path = log

    @classmethod
    async def start(cls, workdir: Path, env: dict[str, str]) -> Worker:
        log = workdir / f"worker-{uuid.uuid4().hex[:6]}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "worker", cwd=workdir, env=env, stdout=out, stderr=out
            )
        return cls(process, log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def stop(self, sig: signal.Signals = signal.SIGTERM, within: float = 30) -> int:
        self.process.send_signal(sig)
        return await asyncio.wait_for(self.process.wait(), within)

    async def ensure_gone(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


def image_ref(i: int, url: str) -> ImageRef:
    return ImageRef(
        guild_id=1,
        channel_id=10,
        message_id=1_000 + i,
        image_key=i,
        kind="embed",
        author_id=5,
        posted_at=datetime.now(UTC),
        url=url,
        source_url=url,
        filename=f"p{i}.png",
        content_type="image/png",
    )


def host_images(fd: FakeDiscord, count: int, *, stalled: range = range(0)) -> list[str]:
    """URLs of ``count`` distinct pictures on the stand-in's CDN; those in ``stalled`` send
    half their bytes and then hang."""
    urls = []
    for i in range(count):
        url = fd.host_external_image(
            f"p{i}.png", picture("blue", "circle", 100 + i).data, "image/png"
        )
        if i in stalled:
            fd.set_cdn_fault(url, stall=True)
        urls.append(url)
    return urls


def downloads(fd: FakeDiscord) -> Counter[str]:
    return Counter(path.rsplit("/", 1)[-1] for path, _ in fd.cdn.hits)


async def stored_per_image(engine) -> Counter[tuple[int, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(IndexedImage.message_id, IndexedImage.image_key, func.count()).group_by(
                IndexedImage.message_id, IndexedImage.image_key
            )
        )
        return Counter({(m, k): n for m, k, n in rows})


async def jobs(engine, *, leased: bool | None = None) -> int:
    stmt = select(func.count()).select_from(IndexJob)
    if leased:
        stmt = stmt.where(IndexJob.claimed_until > datetime.now(UTC))
    elif leased is False:
        stmt = stmt.where(IndexJob.claimed_until.is_(None))
    async with engine.connect() as conn:
        return int(await conn.scalar(stmt))


def url_of(engine) -> str:
    return engine.url.render_as_string(hide_password=False)


async def _is(value, expected) -> bool:
    return await value == expected


async def test_a_worker_waits_for_its_database_then_stores_each_queued_image_once(
    postgres_server, tiny_encoder, tmp_path
):
    name = f"test_{uuid.uuid4().hex}"
    url = postgres_url(postgres_server, name)
    host = str(postgres_server.get_postmaster_info().socket_dir)
    admin = await asyncpg.connect(user="postgres", database="postgres", host=host)
    engine = create_engine(url)
    async with FakeDiscord() as fd:
        # Started before its database exists, as a compose file starts everything at once.
        worker = await Worker.start(tmp_path, worker_env(url, fd.cdn_origin))
        try:
            await eventually(lambda: _logged(worker, "cannot reach the database"), within=60)
            assert worker.process.returncode is None
            await admin.execute(f'CREATE DATABASE "{name}"')
            await ensure_schema(engine)
            urls = host_images(fd, 30)
            queue = JobQueue(engine, model_id=tiny_encoder.model_id)
            await queue.enqueue([image_ref(i, u) for i, u in enumerate(urls)])

            try:
                await eventually(lambda: _is(jobs(engine), 0), within=90)
            except AssertionError as exc:
                raise AssertionError(
                    f"queue not drained; the worker's log:\n{worker.log()}"
                ) from exc
            stored = await stored_per_image(engine)
            assert sorted(stored) == [(1_000 + i, i) for i in range(30)]
            assert set(stored.values()) == {1}
            assert set(downloads(fd).values()) == {1}, "each image downloaded by one worker once"
            assert await worker.stop() == 0
        finally:
            await worker.ensure_gone()
            await engine.dispose()
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
    log = worker.log()
    assert "encoder worker started, lanes clip: model " in log and "batches of" in log
    # Started without DISCORD_TOKEN: it says once what it cannot do, and what to set.
    assert log.count(NO_TOKEN_FOR_WORKER) == 1
    assert "WARNING" in next(line for line in log.splitlines() if NO_TOKEN_FOR_WORKER in line)
    assert "Traceback" not in log


async def test_a_worker_with_the_bot_token_renews_an_expired_attachment_link(
    postgres_engine, tiny_encoder, tmp_path
):
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Old links")
        general = guild.add_text_channel("general")
        alice = guild.add_member("alice")
        message = await fd.post_message(general, alice, "", attachments=[picture("red", "star", 1)])
        (attachment,) = message.attachments
        old_url = attachment.url  # signed now; the property signs afresh at each read
        ref = dataclasses.replace(
            image_ref(0, old_url),
            guild_id=guild.id,
            channel_id=general.id,
            message_id=message.id,
            image_key=attachment.id,
            kind="attachment",
            author_id=alice.id,
            source_url=old_url.split("?")[0],
        )
        await JobQueue(postgres_engine, model_id=tiny_encoder.model_id).enqueue([ref])
        fd.advance_clock(LINK_TTL + 3600)  # a day in the queue: its link no longer works

        env = worker_env(
            url_of(postgres_engine),
            fd.cdn_origin,
            DISCORD_TOKEN=fd.token,
            DISCORD_API_BASE=fd.api_base,
        )
        worker = await Worker.start(tmp_path, env)
        try:
            await eventually(lambda: _is(jobs(postgres_engine), 0), within=90)
            assert await worker.stop() == 0
        finally:
            await worker.ensure_gone()
        refreshed = [
            r.json["attachment_urls"]
            for r in fd.requests
            if r.method == "POST" and r.path == "/attachments/refresh-urls"
        ]
        assert refreshed == [[old_url]]
        assert not any(r.path.startswith("/gateway") for r in fd.requests), "REST only"
    assert await stored_per_image(postgres_engine) == {(message.id, attachment.id): 1}
    log = worker.log()
    assert "expired attachment links are renewed" in log
    assert NO_TOKEN_FOR_WORKER not in log and "Traceback" not in log


async def test_a_worker_whose_token_discord_refuses_stops_as_the_bot_does(tmp_path):
    async with FakeDiscord() as fd:
        revoked = fd.token[:-4] + ("AAAA" if not fd.token.endswith("AAAA") else "BBBB")
        env = worker_env(
            "postgresql+asyncpg://clipfind@127.0.0.1:1/clipfind",
            fd.cdn_origin,
            DISCORD_TOKEN=revoked,
            DISCORD_API_BASE=fd.api_base,
        )
        worker = await Worker.start(tmp_path, env)
        try:
            assert await asyncio.wait_for(worker.process.wait(), 60) == 2
        finally:
            await worker.ensure_gone()
    log = worker.log()
    assert "CRITICAL" in log and TOKEN_REFUSED in log
    assert "Traceback" not in log and "cannot reach the database" not in log


async def test_a_worker_refused_by_the_database_keeps_trying_and_stops_cleanly(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nothing listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql+asyncpg://clipfind@127.0.0.1:{port}/clipfind"
    worker = await Worker.start(tmp_path, worker_env(url, "http://127.0.0.1:1"))
    try:
        # Once at start, then again after the backoff.
        await eventually(lambda: _logged(worker, "cannot reach the database", times=2), within=60)
        assert worker.process.returncode is None
        assert await worker.stop() == 0
    finally:
        await worker.ensure_gone()
    log = worker.log()
    assert "cannot reach the database 127.0.0.1/clipfind, trying again in" in log
    assert "Traceback" not in log


async def test_a_worker_killed_mid_work_loses_nothing_and_repeats_nothing_done(
    postgres_engine, tiny_encoder, tmp_path
):
    url, lease = url_of(postgres_engine), "3"
    async with FakeDiscord() as fd:
        stalled = range(30, 40)  # these downloads hang: the first worker dies holding them
        urls = host_images(fd, 40, stalled=stalled)
        queue = JobQueue(postgres_engine, model_id=tiny_encoder.model_id)
        await queue.enqueue([image_ref(i, u) for i, u in enumerate(urls)])
        first = await Worker.start(tmp_path, worker_env(url, fd.cdn_origin, JOB_LEASE_S=lease))
        try:
            await eventually(lambda: _is(jobs(postgres_engine), len(stalled)), within=90)
            await eventually(lambda: _is(jobs(postgres_engine, leased=True), 10), within=10)
            assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
        finally:
            await first.ensure_gone()
        # Its claims outlive it (another consumer would otherwise take work still in hand)...
        assert await jobs(postgres_engine, leased=True) == len(stalled)
        fd.cdn.faults.clear()
        before = downloads(fd)

        second = await Worker.start(tmp_path, worker_env(url, fd.cdn_origin, JOB_LEASE_S=lease))
        try:
            # ...and come back to the queue when the lease runs out.
            await eventually(lambda: _is(jobs(postgres_engine), 0), within=90)
            assert await second.stop() == 0
        finally:
            await second.ensure_gone()

    stored = await stored_per_image(postgres_engine)
    assert sorted(stored) == [(1_000 + i, i) for i in range(40)]
    assert set(stored.values()) == {1}
    # What the dead worker finished was not done again; what it held unfinished was, once.
    again = downloads(fd) - before
    assert sorted(again) == [f"p{i}.png" for i in stalled]
    assert set(again.values()) == {1}
    assert {before[f"p{i}.png"] for i in range(30)} == {1}


async def test_a_stopped_worker_hands_its_claims_back_at_once(
    postgres_engine, tiny_encoder, tmp_path
):
    async with FakeDiscord() as fd:
        urls = host_images(fd, 5, stalled=range(5))
        queue = JobQueue(postgres_engine, model_id=tiny_encoder.model_id)
        await queue.enqueue([image_ref(i, u) for i, u in enumerate(urls)])
        env = worker_env(url_of(postgres_engine), fd.cdn_origin, SHUTDOWN_DEADLINE_S="1")
        worker = await Worker.start(tmp_path, env)
        try:
            await eventually(lambda: _is(jobs(postgres_engine, leased=True), 5), within=90)
            assert await worker.stop() == 0
        finally:
            await worker.ensure_gone()
    # JOB_LEASE_S is 300 s: without the hand-back the next worker would wait that long.
    assert await jobs(postgres_engine, leased=False) == 5
    assert "handed 5 unfinished jobs back to the queue" in worker.log()


async def test_a_bot_that_does_not_encode_leaves_the_images_to_a_worker(postgres_engine, tmp_path):
    url = url_of(postgres_engine)
    async with FakeDiscord() as fd:
        settings = bot_settings(fd, tmp_path, database_url=url, encode_images=False)
        guild = fd.add_guild("Workers")
        general = guild.add_text_channel("general")
        alice = guild.add_member("alice")
        worker = await Worker.start(tmp_path, worker_env(url, fd.cdn_origin))
        try:
            async with running_bot(settings, fd) as bot:
                await fd.wait_ready()
                circle = await fd.post_message(
                    general, alice, "", attachments=[picture("red", "circle", 1)]
                )
                square = await fd.post_message(
                    general, alice, "", attachments=[picture("green", "square", 2)]
                )
                await asyncio.wait_for(settled(bot, fd), 90)  # join waits for the worker
                assert await bot.store.count(guild_id=guild.id) == 2
                assert bot.pipeline.counters.indexed == 0, "the bot encoded nothing itself"

                reply = await find(fd, guild, general, alice, "a red circle", count=2)
                assert result_ids(reply)[0] == circle.id
                reply = await find(fd, guild, general, alice, "a green square", count=2)
                assert result_ids(reply)[0] == square.id

                # The owner's status tells what this process does instead of encoding.
                owner = guild.add_existing_user(fd.owner_user)
                said = await status(fd, guild, general, owner)
                sent = re.fullmatch(
                    r"\*\*This process since start:\*\* (\d+) images sent to the database "
                    r"queue \(an edited message's again\); encoder workers encode them "
                    r"\(ENCODE_IMAGES=false\)",
                    line(said, "This process since start"),
                )
                assert sent and int(sent[1]) >= 2
                assert line(said, "Images indexed in this server").endswith(":** 2")
                # The worker's heartbeat makes it the one encoder; a bot that only queues is none.
                encoding = line(said, "Encoding, whole cluster")
                assert "from 1 process (worker on " in encoding, encoding
            assert await worker.stop() == 0
        finally:
            await worker.ensure_gone()


async def test_a_worker_on_another_model_than_the_index_refuses_to_start(postgres_engine, tmp_path):
    await set_state(postgres_engine, INDEX_MODEL_KEY, "ViT-B-32/laion2b_s34b_b79k")
    await JobQueue(postgres_engine, model_id="tiny").enqueue([image_ref(1, "http://x/p1.png")])
    worker = await Worker.start(tmp_path, worker_env(url_of(postgres_engine), "http://x"))
    try:
        assert await asyncio.wait_for(worker.process.wait(), 90) == 2
    finally:
        await worker.ensure_gone()
    assert "the index is built with the model ViT-B-32/laion2b_s34b_b79k" in worker.log()
    assert "Traceback" not in worker.log()
    async with postgres_engine.connect() as conn:
        untouched = (await conn.execute(select(IndexJob.attempts, IndexJob.claimed_until))).all()
    assert untouched == [(0, None)], "no job was taken"


async def _logged(worker: Worker, text: str, *, times: int = 1) -> bool:
    if worker.process.returncode is not None:
        raise AssertionError(f"the worker exited ({worker.process.returncode}):\n{worker.log()}")
    return worker.log().count(text) >= times


async def test_a_busy_worker_logs_its_throughput_and_an_idle_one_keeps_quiet(monkeypatch, caplog):
    from types import SimpleNamespace

    from bot import worker
    from retrieval.indexing import PipelineCounters

    monkeypatch.setattr(worker, "REPORT_EVERY_S", 0.2)
    pipeline = SimpleNamespace(counters=PipelineCounters(), consumes=True, queued=2)
    reading = SimpleNamespace(counters=PipelineCounters(), held=1)
    caplog.set_level(logging.INFO, logger="bot.worker")
    both = SimpleNamespace(pipeline=pipeline, reading=reading)
    reporter = asyncio.create_task(worker._report(both))
    try:
        await asyncio.sleep(0.5)  # idle: nothing to say
        assert not caplog.records
        pipeline.counters.indexed += 7
        pipeline.counters.failed["http_404"] += 1
        reading.counters.indexed += 2
        reading.counters.reused += 1
        reading.counters.failed["ocr_not_an_image"] += 1
        await eventually(lambda: _any(caplog.records), within=5)
    finally:
        reporter.cancel()
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("encoder worker, the last ")
    # Each lane's figures: the vectors' and the words'.
    vectors, words = line.split(": ", 1)[1].split("; ")
    assert vectors.startswith("vectors: 8 (")
    assert vectors.endswith("since start 7 encoded, 0 reposts reused, 1 skipped, 2 in hand")
    assert words.startswith("words: 4 (")
    assert words.endswith("since start 2 read, 1 copied, 1 unreadable, 1 in hand")

    # A worker that only reads names only its words.
    caplog.clear()
    reporter = asyncio.create_task(worker._report(SimpleNamespace(pipeline=None, reading=reading)))
    try:
        await asyncio.sleep(0)  # the reporter takes its first figures
        reading.counters.indexed += 1
        await eventually(lambda: _any(caplog.records), within=5)
    finally:
        reporter.cancel()
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.split(": ", 1)[1].startswith("words: 1 (") and "vectors" not in line


async def _any(records) -> bool:
    return bool(records)


async def test_a_database_away_as_the_model_loads_is_waited_for(
    postgres_engine, monkeypatch, caplog
):
    """The model is checked against the index right after it loaded, seconds after the schema
    was: a PostgreSQL restarting then (as the soak met it) is waited out, not a reason to stop."""
    from bot import worker
    from retrieval.errors import StoreUnavailable

    monkeypatch.setattr("retrieval.backoff.FIRST_S", 0.01)
    await set_state(postgres_engine, INDEX_MODEL_KEY, "tiny")
    asked = []

    async def restarting(engine, key):
        asked.append(key)
        if len(asked) < 3:
            raise StoreUnavailable("[Errno 2] No such file or directory")
        return "tiny"

    monkeypatch.setattr(worker, "get_state", restarting)
    caplog.set_level(logging.ERROR, logger="bot.worker")
    await asyncio.wait_for(
        worker._refuse_another_model(
            postgres_engine, dataclasses.make_dataclass("E", ["model_id"])("tiny")
        ),
        30,
    )
    assert len(asked) == 3
    assert sum("to check the index's model" in r.getMessage() for r in caplog.records) == 2


async def test_a_running_worker_notices_that_the_bot_switched_models(postgres_engine, monkeypatch):
    from bot import worker

    monkeypatch.setattr(worker, "MODEL_CHECK_S", 0.05)
    await set_state(postgres_engine, INDEX_MODEL_KEY, "tiny")
    watch = asyncio.create_task(worker._model_switched(postgres_engine, "tiny"))
    await asyncio.sleep(0.3)
    assert not watch.done(), "same model: the worker goes on"
    await set_state(postgres_engine, INDEX_MODEL_KEY, "ViT-L-14/openai")
    said = await asyncio.wait_for(watch, 5)
    assert said.startswith("the index is now built with the model ViT-L-14/openai, and this ")


async def test_a_worker_is_woken_when_jobs_are_queued_not_at_its_next_poll(postgres_engine):
    from types import SimpleNamespace

    from bot import worker

    woken = asyncio.Event()
    pipeline = SimpleNamespace(wake=woken.set)
    listener = asyncio.create_task(worker._woken(postgres_engine, pipeline))
    try:
        await asyncio.wait_for(woken.wait(), 5)  # once listening: what came before
        woken.clear()
        await asyncio.sleep(0.3)
        assert not woken.is_set(), "nothing queued, nothing to wake for"
        await JobQueue(postgres_engine, model_id="tiny").enqueue([image_ref(1, "http://x/1")])
        await asyncio.wait_for(woken.wait(), 2)
    finally:
        listener.cancel()
