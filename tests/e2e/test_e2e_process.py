"""`python -m bot` killed or stopped while images wait: nothing is lost, because the work waiting
to be indexed lives in the database, not in the process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from retrieval.database.engine import create_engine
from retrieval.database.tables import IndexJob
from tests.fakediscord import FakeDiscord
from tests.helpers import bot_settings, eventually, picture, running_bot

ROOT = Path(__file__).resolve().parents[2]
IMAGES = 40


def process_env(fd: FakeDiscord, settings) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "DISCORD_TOKEN": fd.token,
        "DISCORD_API_BASE": fd.api_base,
        "DISCORD_GATEWAY_URL": fd.gateway_url,
        "DISCORD_MEDIA_ORIGINS": fd.cdn_origin,
        "DATABASE_URL": settings.database_url,
        "CLIP_MODEL": settings.clip_model,
        "CLIP_PRETRAINED": settings.clip_pretrained,
        "CLIP_DEVICE": "cpu",
        "OCR": "off",  # see tests/e2e.py's bot_settings
        "BACKFILL": "false",  # only the jobs table can bring the images back
        "SHUTDOWN_DEADLINE_S": "5",
        "JOB_LEASE_S": str(settings.job_lease_s),
    }


async def jobs_waiting(url: str) -> int:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(IndexJob)))
    finally:
        await engine.dispose()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
async def test_images_queued_when_the_process_stops_are_indexed_after_a_restart(
    tmp_path, database_url, how
):
    async with FakeDiscord() as fd:
        # On PostgreSQL a killed process's claims are taken again when their lease runs out
        # (another process might still hold them); on SQLite, at once by the next start.
        settings = bot_settings(
            fd, tmp_path, database_url=database_url, backfill=False, job_lease_s=6
        )
        guild = fd.add_guild("Interrupted")
        general = guild.add_text_channel("general")
        alice = guild.add_member("alice")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            cwd=tmp_path,
            env=process_env(fd, settings),
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await fd.wait_ready(timeout=90)
            for i in range(IMAGES):  # every download hangs while this process runs
                data = picture("blue", "circle", 100 + i).data
                url = fd.host_external_image(f"p{i}.png", data, "image/png")
                fd.set_cdn_fault(url, stall=True)
                await fd.post_message(general, alice, url, embeds=[fd.image_embed(url)])
            await eventually(
                lambda: _equals(jobs_waiting(settings.database_url), IMAGES), within=60
            )
            process.send_signal(how)
            status = await asyncio.wait_for(process.wait(), 30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert status == (0 if how == signal.SIGTERM else -signal.SIGKILL)

        fd.cdn.faults.clear()
        fd.cdn.closing.set()  # stalled responses of the old process end
        async with running_bot(settings, fd) as bot:
            await eventually(lambda: _stored(bot, guild.id), within=60)
        assert await jobs_waiting(settings.database_url) == 0


async def _equals(count, expected: int) -> bool:
    return await count == expected


async def _stored(bot, guild_id: int) -> bool:
    return await bot.store.count(guild_id=guild_id) == IMAGES
