"""End to end: the real bot refuses to start over on a lost SQLite file, and stops when its file
vanishes under it, instead of writing into a deleted file."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from bot.app import DATABASE_LOST_STATUS, open_bot, run
from bot.error_replies import NOT_SAVED
from retrieval.database.sqlite_file import marker_path
from retrieval.errors import DatabaseLost
from tests.fakediscord import FakeDiscord, P
from tests.helpers import bot_settings, picture, running_bot, settled

ROOT = Path(__file__).resolve().parents[2]


async def test_first_start_restart_and_a_lost_database_refused(tmp_path, monkeypatch, caplog):
    db = tmp_path / "clipfind.db"
    async with FakeDiscord() as fd:
        settings = bot_settings(fd, tmp_path, database_check_interval_s=0.05)
        guild = fd.add_guild("Photos")
        channel = guild.add_text_channel("general")
        member = guild.add_member("ana")
        async with running_bot(settings, fd) as bot:
            await fd.post_message(channel, member, "", attachments=[picture("red", "square", 1)])
            await settled(bot, fd)
            assert await bot.store.count(guild_id=guild.id) == 1
        # Writing and checkpointing under a watchdog that looks every 50 ms raised no alarm.
        assert bot.exit_status == 0
        assert marker_path(db).exists()

        async with running_bot(settings, fd) as bot:
            assert await bot.store.count(guild_id=guild.id) == 1
        assert bot.exit_status == 0

    for leftover in tmp_path.glob("clipfind.db*"):
        if leftover != marker_path(db):
            leftover.unlink()
    with pytest.raises(DatabaseLost) as info:
        async with open_bot(settings):
            pass
    assert f"the database {db} is missing" in str(info.value)
    assert not db.exists()

    # What the operator sees: `python -m bot` refuses with that sentence and status 2.
    from bot.cli import main

    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("DISCORD_TOKEN", fd.token)  # well-formed; Discord is not asked
    caplog.set_level(logging.CRITICAL)
    assert await asyncio.to_thread(main, []) == 2
    assert f"cannot start: the database {db} is missing" in caplog.text
    assert f"delete {marker_path(db)}" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clipfind.db.installation"]


async def test_a_database_deleted_while_running_stops_the_bot(tmp_path, caplog):
    caplog.set_level(logging.CRITICAL)
    db = tmp_path / "clipfind.db"
    async with FakeDiscord() as fd:
        settings = bot_settings(fd, tmp_path, database_check_interval_s=0.2)
        bot_run = asyncio.create_task(run(settings))
        await fd.wait_ready(timeout=30)
        db.unlink()
        status = await asyncio.wait_for(bot_run, 30)
    assert status == DATABASE_LOST_STATUS
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert line.startswith(f"stopping: the database file {db} was deleted")
    # The next start refuses instead of beginning again on an empty database.
    with pytest.raises(DatabaseLost, match="is missing"):
        await run(settings)
    assert not db.exists()


async def test_the_process_really_exits_when_its_database_is_deleted(tmp_path):
    """`python -m bot` as an operator runs it: no task or thread keeps it alive half-stopped."""
    db = tmp_path / "clipfind.db"
    async with FakeDiscord() as fd:
        settings = bot_settings(fd, tmp_path)
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "HF_HUB_OFFLINE": "1",
            "DISCORD_TOKEN": fd.token,
            "DISCORD_API_BASE": fd.api_base,
            "DISCORD_GATEWAY_URL": fd.gateway_url,
            "DATABASE_URL": settings.database_url,
            "CLIP_MODEL": settings.clip_model,
            "CLIP_PRETRAINED": settings.clip_pretrained,
            "CLIP_DEVICE": "cpu",
            "OCR": "off",  # see tests/e2e.py's bot_settings
            "DATABASE_CHECK_INTERVAL_S": "0.2",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", cwd=tmp_path, env=env, stderr=asyncio.subprocess.PIPE
        )
        stderr = asyncio.create_task(process.stderr.read())  # drained, so logging never blocks
        try:
            await fd.wait_ready(timeout=60)
            db.unlink()
            status = await asyncio.wait_for(process.wait(), 60)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert status == DATABASE_LOST_STATUS
    log = re.sub(r"\x1b\[[0-9;]*m", "", (await stderr).decode())  # colour codes on some terminals
    (line,) = [line for line in log.splitlines() if " CRITICAL " in line]
    assert f"bot.app stopping: the database file {db} was deleted" in line


async def test_a_change_written_into_a_deleted_database_is_not_confirmed(tmp_path, caplog):
    """Between two looks of the watchdog, an exclusion or an opt-out written into the deleted
    file is answered as not saved, never as done."""
    data = tmp_path / "data"
    async with FakeDiscord() as fd:
        # The watchdog looks at its slowest: the commands come between two of its looks.
        settings = bot_settings(fd, data, database_check_interval_s=60)
        guild = fd.add_guild("Photos")
        general, memes = guild.add_text_channel("general"), guild.add_text_channel("memes")
        mod = guild.add_member("mod", roles=[guild.add_role("mods", permissions=P.MANAGE_GUILD)])
        ana = guild.add_member("ana")
        async with running_bot(settings, fd) as bot:
            for seed in (1, 2):
                await fd.post_message(memes, ana, "", attachments=[picture("red", "cross", seed)])
            await fd.post_message(general, ana, "", attachments=[picture("blue", "star", 3)])
            await settled(bot, fd)
            assert await bot.store.count(guild_id=guild.id) == 3

            shutil.rmtree(data)  # the database folder, under the running bot
            excluded = await fd.invoke_slash(
                guild, general, mod, "clipfind channels exclude", {"channel": memes}
            )
            answer = (await excluded.wait_reply(timeout=30))["content"]
            assert answer == NOT_SAVED
            assert "deleted 2 indexed images" not in answer

            opted_out = await fd.invoke_slash(guild, general, ana, "privacy opt-out")
            asked = await opted_out.wait_reply(timeout=30)
            button = next(
                item["custom_id"]
                for row in asked["components"]
                for item in row["components"]
                if item.get("label", "").startswith("Opt out")
            )
            pressed = await fd.click(asked, button, ana)
            told = await pressed.wait_reply(timeout=30, predicate=lambda m: m["content"] != "")
            assert told["content"] == NOT_SAVED
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(f"the database folder {data} was deleted" in line for line in lines), lines
