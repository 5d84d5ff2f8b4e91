"""End to end: a bot started with METRICS_PORT serves Prometheus figures of its work over HTTP,
and reports itself in the database as one of the cluster's consumers while it runs."""

from __future__ import annotations

import asyncio
import re
import socket

import aiohttp
import pytest
from sqlalchemy import select

from retrieval.database.engine import create_engine
from retrieval.database.tables import IndexConsumer
from tests.db.test_operating import scrape
from tests.fakediscord import Attachment, FakeDiscord
from tests.helpers import bot_settings, free_port, picture, running_bot, settled


def value(text: str, sample: str) -> float:
    """The value of one sample line (``name{labels}``) of a scrape."""
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert found, f"{sample} not in the scrape"
    return float(found.group(1))


async def consumers(engine) -> list:
    async with engine.connect() as conn:
        return (await conn.execute(select(IndexConsumer))).all()


@pytest.mark.asyncio(loop_scope="function")
async def test_metrics_show_the_images_a_running_bot_stored(tmp_path):
    port = free_port()
    async with FakeDiscord() as fd:
        guild = fd.add_guild("Metrics")
        general = guild.add_text_channel("general")
        alice = guild.add_member("alice")
        settings = bot_settings(fd, tmp_path, metrics_port=port, metrics_addr="127.0.0.1")
        async with running_bot(settings, fd) as bot:
            # History read first: a failure leaves no row behind, so a backfill reading these
            # posts would try the broken one again (and count it twice).
            await asyncio.wait_for(bot.backfill.wait_idle(), 30)
            before = await scrape(port)
            assert value(before, "clipfind_images_stored_total") == 0
            assert value(before, "clipfind_queue_window_size") == settings.queue_size

            await fd.post_message(general, alice, "", attachments=[picture("red", "circle", 1)])
            await fd.post_message(
                general,
                alice,
                "",
                attachments=[picture("blue", "star", 2), picture("green", "cross", 3)],
            )
            broken = Attachment("broken.png", b"no picture here", "image/png")
            await fd.post_message(general, alice, "", attachments=[broken])
            await settled(bot, fd)

            after = await scrape(port)
            assert value(after, "clipfind_images_stored_total") == 3
            assert value(after, 'clipfind_images_failed_total{reason="not_an_image"}') == 1
            # Each picture read from the media proxy's copy, the broken one from its original
            # (the proxy refuses what has no dimensions: the bot does not ask it).
            assert value(after, "clipfind_images_resized_total") == 3
            assert value(after, "clipfind_downloaded_bytes_total") == sum(
                fd.cdn.served_bytes.values()
            )
            batches = value(after, "clipfind_image_batches_total")
            assert batches >= 1
            assert value(after, "clipfind_encode_seconds_count") == batches
            assert value(after, "clipfind_encode_seconds_sum") > 0
            assert value(after, "clipfind_queue_window_jobs") == 0
            # Read from the database at start: this bot, reporting itself.
            assert value(after, 'clipfind_cluster_consumers{role="bot"}') == 1

            (row,) = await consumers(bot.engine)
            assert (row.role, row.host, row.shards) == ("bot", socket.gethostname(), None)
            assert row.model_id == bot.encoder.model_id and row.device.startswith("cpu")
        # A clean stop takes the row at once; the metrics server goes with the bot.
        with pytest.raises(aiohttp.ClientConnectionError):
            await scrape(port)
    engine = create_engine(settings.database_url)
    try:
        assert await consumers(engine) == []
    finally:
        await engine.dispose()


def test_a_process_names_its_shards_in_its_report():
    from types import SimpleNamespace

    from bot.app import shards_of

    assert shards_of(SimpleNamespace(shard_count=None, shard_id=None)) is None
    assert shards_of(SimpleNamespace(shard_count=4, shard_id=None, shard_ids=[3, 1])) == "1, 3 of 4"
    assert shards_of(SimpleNamespace(shard_count=2, shard_id=1)) == "1 of 2"
