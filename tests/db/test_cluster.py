"""The cluster's figures: consumers report themselves, silent ones drop out; the queue is counted
by state from the jobs table, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select

import retrieval.runtime.cluster
from retrieval.database.engine import create_engine
from retrieval.database.tables import IndexConsumer, IndexFailure, IndexJob
from retrieval.runtime.cluster import STALE_S, ConsumerReport, read_figures

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
async def other_engine(store_engine):
    """A second engine on the same database: another process sharing it."""
    engine = create_engine(store_engine.url.render_as_string(hide_password=False))
    yield engine
    await engine.dispose()


async def rows(engine) -> int:
    async with engine.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(IndexConsumer))


async def test_each_process_reports_and_a_silent_one_is_ignored_then_deleted(
    store_engine, other_engine
):
    bot_engine, worker_engine = store_engine, other_engine
    stored = {"bot": 100, "worker": 0}
    bot = ConsumerReport(
        bot_engine,
        role="bot",
        model_id="tiny",
        device="cpu fp32",
        stored=lambda: stored["bot"],
        in_hand=lambda: 3,
        shards=lambda: "0 of 2",
    )
    worker = ConsumerReport(
        worker_engine,
        role="worker",
        model_id="tiny",
        device="cuda:0 fp16",
        stored=lambda: stored["worker"],
        in_hand=lambda: 5,
    )
    assert bot.key != worker.key
    await bot.report(now=T0)
    await worker.report(now=T0)
    figures = await read_figures(worker_engine, now=T0 + timedelta(seconds=1))
    assert [(c.role, c.shards, c.device, c.images_stored) for c in figures.consumers] == [
        ("bot", "0 of 2", "cpu fp32", 100),
        ("worker", None, "cuda:0 fp16", 0),
    ]
    assert figures.claimed == 8
    assert figures.rate == 0.0  # one report gives no rate yet

    # 15 s later the bot stored 30 more images, the worker 600.
    stored["bot"] += 30
    stored["worker"] += 600
    await bot.report(now=T0 + timedelta(seconds=15))
    await worker.report(now=T0 + timedelta(seconds=15))
    figures = await read_figures(bot_engine, now=T0 + timedelta(seconds=16))
    assert [c.rate for c in figures.consumers] == [2.0, 40.0]
    assert figures.rate == 42.0
    assert [c.images_stored for c in figures.consumers] == [130, 600]

    # The worker dies; the bot goes on reporting.
    await bot.report(now=T0 + timedelta(seconds=100))
    late = T0 + timedelta(seconds=15 + STALE_S + 1)
    figures = await read_figures(bot_engine, now=late)
    assert [c.role for c in figures.consumers] == ["bot"]
    assert figures.claimed == 3
    assert await rows(bot_engine) == 2  # ignored, not yet deleted
    await bot.report(now=late)
    assert await rows(worker_engine) == 1  # the next report deleted it

    await bot.leave()  # a clean stop takes its row at once
    assert await rows(worker_engine) == 0


async def test_the_reading_lane_reports_beside_the_vectors_and_is_counted_apart(
    store_engine, other_engine
):
    """A bot taking both lanes and a worker taking only the OCR lane: each lane's throughput and
    jobs in hand are its own, and the worker that only reads is one of the readers."""
    read = {"bot": 4, "worker": 0}
    bot = ConsumerReport(
        store_engine,
        role="bot",
        model_id="tiny",
        device="cpu fp32",
        stored=lambda: 50,
        in_hand=lambda: 3,
    )
    bot_reading = ConsumerReport(
        store_engine,
        role="bot",
        lane="ocr",
        model_id="rapidocr/PP-OCRv6-small",
        device="cpu",
        stored=lambda: read["bot"],
        in_hand=lambda: 1,
    )
    worker = ConsumerReport(
        other_engine,
        role="worker",
        lane="ocr",
        model_id="rapidocr/PP-OCRv6-small",
        device="cpu",
        stored=lambda: read["worker"],
        in_hand=lambda: 2,
        problem=lambda: "task 'ocr-read' failed 5 times",
    )
    for report in (bot, bot_reading, worker):
        await report.report(now=T0)
    read["bot"] += 15
    read["worker"] += 45
    for report in (bot, bot_reading, worker):
        await report.report(now=T0 + timedelta(seconds=15))
    figures = await read_figures(store_engine, now=T0 + timedelta(seconds=16))
    assert [(c.role, c.lane, c.images_stored) for c in figures.consumers] == [("bot", "clip", 50)]
    assert [(c.role, c.lane, c.images_stored, c.rate) for c in figures.readers] == [
        ("bot", "ocr", 19, 1.0),
        ("worker", "ocr", 45, 3.0),
    ]
    assert figures.readers[1].problem == "task 'ocr-read' failed 5 times"
    assert (figures.rate, figures.reading_rate) == (0.0, 4.0)
    assert (figures.claimed, figures.reading_claimed) == (3, 3)

    await worker.leave()
    figures = await read_figures(store_engine, now=T0 + timedelta(seconds=16))
    assert [c.role for c in figures.readers] == ["bot"]


def job(n: int, *, created: datetime, attempts: int = 0, claimed: bool = False) -> dict:
    return dict(
        guild_id=1,
        channel_id=2,
        message_id=1000 + n,
        image_key=n,
        kind="attachment",
        author_id=3,
        posted_at=created,
        url=f"https://cdn.example/{n}.png",
        source_url=f"https://cdn.example/{n}.png",
        filename=f"{n}.png",
        content_type="image/png",
        priority=0,
        attempts=attempts,
        retry_at=created + timedelta(hours=attempts),
        claimed_until=created + timedelta(days=1) if claimed else None,
        created_at=created,
    )


async def test_the_queue_is_counted_by_state_with_its_oldest_first_try(store_engine, monkeypatch):
    now = T0
    jobs = [
        job(1, created=now - timedelta(seconds=90)),
        job(2, created=now - timedelta(seconds=30), claimed=True),
        job(3, created=now - timedelta(seconds=5)),
        # Older, but failed before: they wait for their retry, not for a first try.
        job(4, created=now - timedelta(hours=5), attempts=2),
        job(5, created=now - timedelta(hours=9), attempts=1, claimed=True),
    ]
    failures = [
        dict(guild_id=1, reason="not_an_image", count=2, last_at=now),
        dict(guild_id=7, reason="not_an_image", count=3, last_at=now),
        dict(guild_id=7, reason="too_large", count=1, last_at=now),
    ]
    async with store_engine.begin() as conn:
        await conn.execute(insert(IndexJob), jobs)
        await conn.execute(insert(IndexFailure), failures)

    figures = await read_figures(store_engine, now=now)
    assert (figures.waiting, figures.retrying, figures.depth) == (3, 2, 5)
    assert figures.oldest_waiting_s == 90.0
    assert figures.failed == {"not_an_image": 5, "too_large": 1}
    assert not figures.capped
    assert figures.consumers == [] and figures.claimed == 0 and figures.rate == 0.0

    # Past the cap the count stops: a floor, flagged as such.
    monkeypatch.setattr(retrieval.runtime.cluster, "COUNT_CAP", 2)
    capped = await read_figures(store_engine, now=now)
    assert (capped.waiting, capped.retrying, capped.capped) == (2, 2, True)
    assert capped.oldest_waiting_s == 90.0


async def test_an_empty_queue_has_no_oldest_job(store_engine):
    figures = await read_figures(store_engine)
    assert (figures.waiting, figures.retrying, figures.oldest_waiting_s) == (0, 0, None)
    assert figures.failed == {}
