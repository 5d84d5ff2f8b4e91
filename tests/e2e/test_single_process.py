"""SQLite serves one process: a second one on the same file refuses to start and names
PostgreSQL, while the read-only operator commands still work next to the running bot; and what
needs several processes (workers, ENCODE_IMAGES=false) is refused on SQLite with the reason."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import pytest

from bot.cli import main
from retrieval.database.sqlite_file import lock_path, sole_process
from retrieval.errors import DatabaseInUse
from tests.e2e.test_e2e_process import process_env
from tests.fakediscord import FakeDiscord
from tests.helpers import bot_settings

# Shaped like a bot token; these starts stop before anything asks Discord.
TOKEN = "A" * 24 + ".Bbbbbb." + "C" * 27


async def run_bot(*args: str, cwd, env) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode, out.decode(errors="replace")


async def test_a_second_process_on_the_sqlite_file_refuses_and_names_postgresql(tmp_path):
    async with FakeDiscord() as fd:
        settings = bot_settings(fd, tmp_path / "data")
        env = process_env(fd, settings)
        first = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", cwd=tmp_path, env=env, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            await fd.wait_ready(timeout=90)

            status, said = await run_bot(cwd=tmp_path, env=env)
            assert status == 2
            assert f"another process (pid {first.pid}) is running on the SQLite database" in said
            assert "use PostgreSQL" in said
            assert "Traceback" not in said
            assert len(fd.identify_payloads) == 1, "refused before connecting to Discord"

            # The operator commands still work beside the running bot.
            status, said = await run_bot("db", "current", cwd=tmp_path, env=env)
            assert status == 0 and "schema revision: " in said and "none" not in said, said
            status, said = await run_bot("db", "upgrade", cwd=tmp_path, env=env)
            assert status == 0 and "nothing to upgrade while the bot runs" in said, said
            status, said = await run_bot("check", cwd=tmp_path, env=env)
            assert "ok    database  sqlite+aiosqlite:///" in said, said

            first.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(first.wait(), 30) == 0
        finally:
            if first.returncode is None:
                first.kill()
                await first.wait()
    # Its lock went with it: the next start may take the file.
    with sole_process(settings.sqlite_path()):
        pass


def test_the_lock_is_held_until_released_even_within_one_process(tmp_path):
    database = tmp_path / "clipfind.db"
    with (
        sole_process(database),
        pytest.raises(DatabaseInUse, match="PostgreSQL"),
        sole_process(database),
    ):
        pass
    with sole_process(database):
        assert lock_path(database).exists()


@pytest.fixture
def sqlite_env(tmp_path, monkeypatch):
    for name in ("DATABASE_URL", "ENCODE_IMAGES", "CLIP_MODEL", "CLIP_PRETRAINED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # the default SQLite database, and no developer's .env
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    return monkeypatch


@pytest.mark.usefixtures("isolated_logging")
@pytest.mark.parametrize(
    ("args", "settings", "refusal"),
    [
        (["worker"], {}, "SQLite serves one process only: run the bot and its workers on"),
        ([], {"ENCODE_IMAGES": "false"}, "so nothing would ever encode the images"),
    ],
)
def test_what_needs_several_processes_is_refused_on_sqlite(
    sqlite_env, caplog, args, settings, refusal
):
    for name, value in settings.items():
        sqlite_env.setenv(name, value)
    assert main(args) == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.CRITICAL]
    assert refusal in line and "PostgreSQL" in line
